// tlparse runs Ollama's own tool-call parser (github.com/ollama/ollama/tools, compiled from a
// checkout of Ollama's source against the stand-in api package next to this file) on a model's
// output: one JSON request a line on stdin, {"template", "tools", "output"}, one JSON answer a
// line on stdout, {"tag", "calls", "content"} or {"error"}. Written for Tuneloom's tests.
package main

import (
	"bufio"
	"encoding/json"
	"os"
	"text/template"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/tools"
)

type request struct {
	Template string     `json:"template"`
	Tools    []api.Tool `json:"tools"`
	Output   string     `json:"output"`
}

type answer struct {
	Tag     string         `json:"tag,omitempty"`
	Calls   []api.ToolCall `json:"calls"`
	Content string         `json:"content"`
	Error   string         `json:"error,omitempty"`
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
		// parsed as Ollama parses a Modelfile TEMPLATE (missingkey=zero, its "json" function)
		tmpl, err := template.New("").Option("missingkey=zero").Funcs(template.FuncMap{
			"json": func(v any) string { b, _ := json.Marshal(v); return string(b) },
		}).Parse(req.Template)
		var ans answer
		if err != nil {
			ans.Error = err.Error()
		} else {
			p := tools.NewParser(tmpl, req.Tools)
			ans.Calls, ans.Content = p.Add(req.Output)
			ans.Tag = p.Tag()
		}
		enc.Encode(ans)
		out.Flush()
	}
}
