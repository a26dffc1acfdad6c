// tlollama runs Ollama's own template and tool-call parser packages (github.com/ollama/ollama/template
// and .../tools, compiled from a checkout of Ollama's source against the stand-in api package next to
// this file). One JSON request a line on stdin, one JSON answer a line on stdout:
//
//	{"mode": "render", "template", "messages", "tools", "think"} -> {"prompt"}
//	{"mode": "parse", "template", "tools", "output"}            -> {"tag", "calls", "content"}
//
// or {"error"}. Written for Tuneloom's tests.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/template"
	"github.com/ollama/ollama/tools"
)

type request struct {
	Mode     string        `json:"mode"`
	Template string        `json:"template"`
	Messages []api.Message `json:"messages"`
	Tools    api.Tools     `json:"tools"`
	Think    *bool         `json:"think"`
	Output   string        `json:"output"`
}

type answer struct {
	Prompt  *string        `json:"prompt,omitempty"`
	Tag     string         `json:"tag,omitempty"`
	Calls   []api.ToolCall `json:"calls,omitempty"`
	Content string         `json:"content,omitempty"`
	Error   string         `json:"error,omitempty"`
}

func handle(req request) (ans answer) {
	tmpl, err := template.Parse(req.Template)
	if err != nil {
		return answer{Error: err.Error()}
	}
	if req.Mode == "parse" {
		p := tools.NewParser(tmpl.Template, req.Tools)
		ans.Calls, ans.Content = p.Add(req.Output)
		ans.Tag = p.Tag()
		return ans
	}
	var b bytes.Buffer
	v := template.Values{Messages: req.Messages, Tools: req.Tools}
	if req.Think != nil {
		v.Think, v.IsThinkSet = *req.Think, true
	}
	if err := tmpl.Execute(&b, v); err != nil {
		return answer{Error: err.Error()}
	}
	s := b.String()
	return answer{Prompt: &s}
}

func main() {
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			return
		}
		enc.Encode(handle(req))
		out.Flush()
	}
}
