// Package api stands in for github.com/ollama/ollama/api when Ollama's own tools package
// (tools/tools.go, tools/template.go) is compiled from a checkout of Ollama's source: just the
// types and methods that package uses, so that it builds without Ollama's module dependencies.
// Written for Tuneloom's tests (see ollama_parse.go); not Ollama's code.
package api

import "encoding/json"

type ToolFunction struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Parameters  any    `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Function ToolFunction `json:"function"`
}

// ToolCallFunctionArguments keeps insertion order, as Ollama's does.
type ToolCallFunctionArguments struct {
	keys []string
	vals map[string]any
}

func NewToolCallFunctionArguments() ToolCallFunctionArguments {
	return ToolCallFunctionArguments{vals: map[string]any{}}
}

func (t *ToolCallFunctionArguments) Set(key string, value any) {
	if _, ok := t.vals[key]; !ok {
		t.keys = append(t.keys, key)
	}
	t.vals[key] = value
}

func (t ToolCallFunctionArguments) MarshalJSON() ([]byte, error) {
	out := []byte{'{'}
	for i, k := range t.keys {
		if i > 0 {
			out = append(out, ',')
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(t.vals[k])
		if err != nil {
			return nil, err
		}
		out = append(append(append(out, kb...), ':'), vb...)
	}
	return append(out, '}'), nil
}

type ToolCallFunction struct {
	Index     int                       `json:"index"`
	Name      string                    `json:"name"`
	Arguments ToolCallFunctionArguments `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}
