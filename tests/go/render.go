// render reproduces, with Go's own text/template engine, the prompt that Ollama
// builds from a model's TEMPLATE for a chat request. Tests feed it the Modelfile
// TEMPLATE and a conversation and compare its output with the Hugging Face Jinja
// rendering used in training.
//
// What it mirrors from Ollama (server/routes.go ChatHandler, GenerateHandler and
// template/template.go), written here from that behaviour:
//   - the Modelfile SYSTEM becomes a leading system message when the request's
//     first message is not a system message (chat), or the system of a generate
//     request;
//   - consecutive messages of one role (tool messages excepted) are merged with a
//     blank line between them, and all system contents are joined into .System;
//   - the template is parsed with missingkey=zero and Ollama's extra function
//     "json", and executed with .System, .Messages, .Tools, .Response (empty),
//     .Think and .IsThinkSet;
//   - templates that never mention .Messages take Ollama's legacy
//     .System/.Prompt/.Response path, which Tuneloom never generates: render
//     refuses them so that a test cannot pass by accident.
//
// Input on stdin: one JSON object, or a JSON array of them:
//
//	{"template": "...", "messages": [{"role": "user", "content": "hi"}],
//	 "system": "Modelfile SYSTEM", "mode": "chat"|"generate", "prompt": "...",
//	 "tools": [{"type": "function", "function": {...}}]}
//
// .Tools and messages' tool_calls take Ollama's types (tools.go). Mode "parse" runs Ollama's
// tool-call parser instead: {"template", "tools", "output"} -> {"tag", "calls", "content"}.
//
// Output on stdout: for one object, the raw prompt; for an array, a JSON array of
// {"prompt": "..."} or {"error": "..."}. With -serve it answers a stream of
// objects with one such JSON result per line, so tests pay the start-up once.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
)

// Message has the fields of Ollama's api.Message that a template can read.
type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking,omitempty"`
	Images    []string   `json:"images,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	ToolName  string     `json:"tool_name,omitempty"`
}

type request struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools,omitempty"`
	System   string    `json:"system"`
	Mode     string    `json:"mode"` // "chat" (default), "generate", "caps", or "parse"
	Prompt   string    `json:"prompt"`
	Think    *bool     `json:"think,omitempty"`  // the request's think; unset: .Think false, .IsThinkSet false
	Output   string    `json:"output,omitempty"` // mode "parse": the model's text, given to the tool-call parser
}

type result struct {
	Prompt *string `json:"prompt,omitempty"`
	Error  string  `json:"error,omitempty"`
	// mode "caps": the template's identifiers, lower-cased (Ollama's template.Vars), and the think
	// tags Ollama infers from it (thinking.InferTags); together they give goTemplateCapabilities.
	Vars       []string `json:"vars,omitempty"`
	ThinkOpen  string   `json:"think_open,omitempty"`
	ThinkClose string   `json:"think_close,omitempty"`
	// mode "parse": the parser's tag, the calls it returns and the content it passes on
	Tag     string     `json:"tag,omitempty"`
	Calls   []ToolCall `json:"calls,omitempty"`
	Content *string    `json:"content,omitempty"`
}

// walk visits every node of a parse tree with its ancestors (the node itself last).
func walk(n parse.Node, ancestors []parse.Node, visit func(parse.Node, []parse.Node)) {
	if n == nil {
		return
	}
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
	case *parse.PipeNode:
		if x == nil {
			return
		}
	}
	ancestors = append(ancestors, n)
	visit(n, ancestors)
	switch x := n.(type) {
	case *parse.ListNode:
		for _, c := range x.Nodes {
			walk(c, ancestors, visit)
		}
	case *parse.ActionNode:
		walk(x.Pipe, ancestors, visit)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			walk(x.Pipe, ancestors, visit)
		}
	case *parse.IfNode:
		walk(&x.BranchNode, ancestors, visit)
	case *parse.RangeNode:
		walk(&x.BranchNode, ancestors, visit)
	case *parse.WithNode:
		walk(&x.BranchNode, ancestors, visit)
	case *parse.BranchNode:
		walk(x.Pipe, ancestors, visit)
		walk(x.List, ancestors, visit)
		if x.ElseList != nil {
			walk(x.ElseList, ancestors, visit)
		}
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			walk(c, ancestors, visit)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			walk(a, ancestors, visit)
		}
	}
}

// capabilities follows Ollama's rules: identifiers of field/variable nodes, lower-cased; the think
// tags are the trimmed first and last text nodes of the list nearest to a .Thinking field that sits
// inside a range over .Messages.
func capabilities(tmpl *template.Template) result {
	set := map[string]bool{}
	var open, close string
	for _, t := range tmpl.Templates() {
		if t.Tree == nil {
			continue
		}
		walk(t.Tree.Root, nil, func(n parse.Node, anc []parse.Node) {
			switch x := n.(type) {
			case *parse.FieldNode:
				for _, id := range x.Ident {
					set[strings.ToLower(id)] = true
				}
				if len(x.Ident) == 0 || x.Ident[0] != "Thinking" {
					return
				}
				var rng *parse.RangeNode
				for i := len(anc) - 1; i >= 0; i-- {
					if r, ok := anc[i].(*parse.RangeNode); ok {
						rng = r
						break
					}
				}
				if rng == nil || !mentions(rng.Pipe, "Messages") {
					return
				}
				for i := len(anc) - 1; i >= 0; i-- {
					if l, ok := anc[i].(*parse.ListNode); ok {
						if tn, ok := l.Nodes[0].(*parse.TextNode); ok {
							open = strings.TrimSpace(tn.String())
						}
						if tn, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
							close = strings.TrimSpace(tn.String())
						}
						break
					}
				}
			case *parse.VariableNode:
				for _, id := range x.Ident {
					set[strings.ToLower(strings.TrimPrefix(id, "$"))] = true
				}
			}
		})
	}
	vars := make([]string, 0, len(set))
	for k := range set {
		vars = append(vars, k)
	}
	sort.Strings(vars)
	return result{Vars: vars, ThinkOpen: open, ThinkClose: close}
}

var ollamaFuncs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// mentions reports whether a parse tree names the field or variable `name`
// (case-insensitive), the test Ollama uses to pick the .Messages code path.
func mentions(n parse.Node, name string) bool {
	if n == nil {
		return false
	}
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return false
		}
		for _, c := range n.Nodes {
			if mentions(c, name) {
				return true
			}
		}
	case *parse.ActionNode:
		return mentions(n.Pipe, name)
	case *parse.TemplateNode:
		return n.Pipe != nil && mentions(n.Pipe, name)
	case *parse.IfNode:
		return mentions(&n.BranchNode, name)
	case *parse.RangeNode:
		return mentions(&n.BranchNode, name)
	case *parse.WithNode:
		return mentions(&n.BranchNode, name)
	case *parse.BranchNode:
		return mentions(n.Pipe, name) || mentions(n.List, name) || (n.ElseList != nil && mentions(n.ElseList, name))
	case *parse.PipeNode:
		if n == nil {
			return false
		}
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				if mentions(a, name) {
					return true
				}
			}
		}
	case *parse.FieldNode:
		for _, id := range n.Ident {
			if strings.EqualFold(id, name) {
				return true
			}
		}
	case *parse.VariableNode:
		for _, id := range n.Ident {
			if strings.EqualFold(id, name) {
				return true
			}
		}
	}
	return false
}

func collate(msgs []Message) (string, []*Message) {
	var systems []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, &m)
	}
	return strings.Join(systems, "\n\n"), out
}

func render(req request) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(ollamaFuncs).Parse(req.Template)
	if err != nil {
		return "", err
	}
	used := false
	for _, t := range tmpl.Templates() {
		if t.Tree != nil && mentions(t.Tree.Root, "messages") {
			used = true
		}
	}
	if !used {
		return "", errors.New("template does not use .Messages (Ollama would take its legacy prompt/response path)")
	}

	var msgs []Message
	switch req.Mode {
	case "", "chat":
		msgs = append(msgs, req.Messages...)
		if req.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]Message{{Role: "system", Content: req.System}}, msgs...)
		}
	case "generate":
		if req.System != "" {
			msgs = append(msgs, Message{Role: "system", Content: req.System})
		}
		msgs = append(msgs, Message{Role: "user", Content: req.Prompt})
	default:
		return "", fmt.Errorf("unknown mode %q", req.Mode)
	}

	system, collated := collate(msgs)
	tmplTools, tmplMsgs := toolsForTemplate(req.Tools), messagesForTemplate(collated)
	var b bytes.Buffer
	think, isThinkSet := false, req.Think != nil
	if isThinkSet {
		think = *req.Think
	}
	err = tmpl.Execute(&b, map[string]any{
		"System":     system,
		"Messages":   tmplMsgs,
		"Tools":      tmplTools,
		"Response":   "",
		"Think":      think,
		"IsThinkSet": isThinkSet,
	})
	return b.String(), err
}

func renderResult(r request) result {
	if r.Mode == "parse" {
		tmpl, err := template.New("").Option("missingkey=zero").Funcs(ollamaFuncs).Parse(r.Template)
		if err != nil {
			return result{Error: err.Error()}
		}
		tag := toolTag(tmpl)
		calls, content := parseToolCalls(tag, r.Tools, r.Output)
		return result{Tag: tag, Calls: calls, Content: &content}
	}
	if r.Mode == "caps" {
		tmpl, err := template.New("").Option("missingkey=zero").Funcs(ollamaFuncs).Parse(r.Template)
		if err != nil {
			return result{Error: err.Error()}
		}
		return capabilities(tmpl)
	}
	out, err := render(r)
	if err != nil {
		return result{Error: err.Error()}
	}
	return result{Prompt: &out}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-serve" {
		// One JSON request after another on stdin, one JSON result line each on stdout.
		dec := json.NewDecoder(bufio.NewReader(os.Stdin))
		out := bufio.NewWriter(os.Stdout)
		enc := json.NewEncoder(out)
		enc.SetEscapeHTML(false)
		for {
			var req request
			if err := dec.Decode(&req); err == io.EOF {
				return
			} else if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			if err := enc.Encode(renderResult(req)); err != nil {
				os.Exit(2)
			}
			out.Flush()
		}
	}

	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	trimmed := bytes.TrimSpace(in)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var reqs []request
		if err := json.Unmarshal(trimmed, &reqs); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		results := make([]result, len(reqs))
		for i, r := range reqs {
			results[i] = renderResult(r)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(results); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return
	}
	var req request
	if err := json.Unmarshal(trimmed, &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out, err := render(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}
