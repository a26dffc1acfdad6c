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
//	 "system": "Modelfile SYSTEM", "mode": "chat"|"generate", "prompt": "..."}
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
	"strings"
	"text/template"
	"text/template/parse"
)

// Message has the fields of Ollama's api.Message that a template can read.
type Message struct {
	Role      string   `json:"role"`
	Content   string   `json:"content"`
	Thinking  string   `json:"thinking,omitempty"`
	Images    []string `json:"images,omitempty"`
	ToolCalls []any    `json:"tool_calls,omitempty"`
	ToolName  string   `json:"tool_name,omitempty"`
}

type request struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
	System   string    `json:"system"`
	Mode     string    `json:"mode"`
	Prompt   string    `json:"prompt"`
}

type result struct {
	Prompt *string `json:"prompt,omitempty"`
	Error  string  `json:"error,omitempty"`
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
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System":     system,
		"Messages":   collated,
		"Tools":      nil,
		"Response":   "",
		"Think":      false,
		"IsThinkSet": false,
	})
	return b.String(), err
}

func renderResult(r request) result {
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
