// Tool calling as Ollama's Go path has it, written here from Ollama's behaviour (api/types.go,
// tools/template.go, tools/tools.go at commit fb30760): what a template sees as .Tools and
// .ToolCalls, and how the tool-call parser reads calls out of a model's text. The tests feed
// templates and outputs through render.go's "chat" and "parse" modes.
//
//   - Tool definitions keep Ollama's field order and drop keys its structs lack; properties and
//     call arguments keep their order in Ollama's types (ordered maps), but the copies a template
//     sees hold them in plain Go maps (sorted keys when marshalled), and nested objects of type
//     "any" are plain maps everywhere. A single property type is written as a string.
//   - The parser's tag is the first non-blank text inside the first `{{ if ... .ToolCalls ... }}`
//     (searching if/range/with bodies in order, stopping at an action), cut before "{" and trimmed;
//     "{" when there is none. After the tag, each call is the first tool name found (longest at
//     the earliest position) followed by the first balanced JSON object that parses: its
//     "arguments" (or "parameters") object, or an object named after the tool, else the object itself.
package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"text/template"
	"text/template/parse"
)

// ---- ordered maps -------------------------------------------------------------------------

type orderedMap[V any] struct {
	keys []string
	vals map[string]V
}

func (m *orderedMap[V]) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	m.vals = map[string]V{}
	m.keys = nil
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string)
		var v V
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if _, seen := m.vals[key]; !seen {
			m.keys = append(m.keys, key)
		}
		m.vals[key] = v
	}
	_, err := dec.Token() // }
	return err
}

func (m orderedMap[V]) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range m.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		vb, err := json.Marshal(m.vals[k])
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// ---- api.Tool and friends -----------------------------------------------------------------

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*pt = PropertyType{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return err
	}
	*pt = many
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty            `json:"anyOf,omitempty"`
	Type        PropertyType              `json:"type,omitempty"`
	Items       any                       `json:"items,omitempty"`
	Description string                    `json:"description,omitempty"`
	Enum        []any                     `json:"enum,omitempty"`
	Properties  *orderedMap[ToolProperty] `json:"properties,omitempty"`
	Required    []string                  `json:"required,omitempty"`
}

type ToolFunctionParameters struct {
	Type       string                    `json:"type"`
	Defs       any                       `json:"$defs,omitempty"`
	Items      any                       `json:"items,omitempty"`
	Required   []string                  `json:"required,omitempty"`
	Properties *orderedMap[ToolProperty] `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

type ToolCallFunction struct {
	Index     int             `json:"index"`
	Name      string          `json:"name"`
	Arguments orderedMap[any] `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

// ---- what a template sees (template/template.go convertToolsForTemplate, convertMessagesForTemplate) ----
// Ollama hands a template copies in which the properties of a tool's parameters and a call's
// arguments are plain Go maps (`json` writes their keys sorted) and a description is always written.

type templateParameters struct {
	Type       string                  `json:"type"`
	Defs       any                     `json:"$defs,omitempty"`
	Items      any                     `json:"items,omitempty"`
	Required   []string                `json:"required,omitempty"`
	Properties map[string]ToolProperty `json:"properties"`
}

type templateFunction struct {
	Name        string             `json:"name"`
	Description string             `json:"description"`
	Parameters  templateParameters `json:"parameters"`
}

type templateTool struct {
	Type     string           `json:"type"`
	Items    any              `json:"items,omitempty"`
	Function templateFunction `json:"function"`
}

type templateCallFunction struct {
	Index     int
	Name      string
	Arguments map[string]any
}

type templateCall struct {
	ID       string
	Function templateCallFunction
}

type templateMessage struct {
	Role      string
	Content   string
	Thinking  string
	Images    []string
	ToolCalls []templateCall
	ToolName  string
}

func (m *orderedMap[V]) plain() map[string]V {
	if m == nil {
		return nil
	}
	out := make(map[string]V, len(m.keys))
	for _, k := range m.keys {
		out[k] = m.vals[k]
	}
	return out
}

func toolsForTemplate(tools []Tool) []templateTool {
	if tools == nil {
		return nil
	}
	out := make([]templateTool, len(tools))
	for i, t := range tools {
		p := t.Function.Parameters
		out[i] = templateTool{Type: t.Type, Items: t.Items, Function: templateFunction{
			Name: t.Function.Name, Description: t.Function.Description,
			Parameters: templateParameters{Type: p.Type, Defs: p.Defs, Items: p.Items, Required: p.Required,
				Properties: p.Properties.plain()}}}
	}
	return out
}

func messagesForTemplate(msgs []*Message) []*templateMessage {
	out := make([]*templateMessage, len(msgs))
	for i, m := range msgs {
		var calls []templateCall
		for _, c := range m.ToolCalls {
			args := c.Function.Arguments.plain()
			if args == nil {
				args = map[string]any{}
			}
			calls = append(calls, templateCall{ID: c.ID, Function: templateCallFunction{
				Index: c.Function.Index, Name: c.Function.Name, Arguments: args}})
		}
		out[i] = &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images,
			ToolCalls: calls, ToolName: m.ToolName}
	}
	return out
}

// ---- the parser's tag ---------------------------------------------------------------------

func pipeReadsToolCalls(p *parse.PipeNode) bool {
	if p == nil {
		return false
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			if f, ok := a.(*parse.FieldNode); ok {
				for _, id := range f.Ident {
					if id == "ToolCalls" {
						return true
					}
				}
			}
		}
	}
	return false
}

func branchLists(n parse.Node) (list, elseList *parse.ListNode, ok bool) {
	switch x := n.(type) {
	case *parse.IfNode:
		return x.List, x.ElseList, true
	case *parse.RangeNode:
		return x.List, x.ElseList, true
	case *parse.WithNode:
		return x.List, x.ElseList, true
	}
	return nil, nil, false
}

func findToolCallsIf(nodes []parse.Node) *parse.IfNode {
	for _, n := range nodes {
		if x, ok := n.(*parse.IfNode); ok && pipeReadsToolCalls(x.Pipe) {
			return x
		}
		if l, ok := n.(*parse.ListNode); ok {
			if r := findToolCallsIf(l.Nodes); r != nil {
				return r
			}
			continue
		}
		if list, elseList, ok := branchLists(n); ok {
			if r := findToolCallsIf(list.Nodes); r != nil {
				return r
			}
			if elseList != nil {
				if r := findToolCallsIf(elseList.Nodes); r != nil {
					return r
				}
			}
		}
	}
	return nil
}

// firstText: the first non-blank text node, depth first; an action, or a branch without text, ends the search.
func firstText(nodes []parse.Node) *parse.TextNode {
	for _, n := range nodes {
		switch x := n.(type) {
		case *parse.TextNode:
			if len(bytes.TrimSpace(x.Text)) > 0 {
				return x
			}
		case *parse.ActionNode:
			return nil
		case *parse.ListNode:
			if t := firstText(x.Nodes); t != nil {
				return t
			}
		default:
			if list, elseList, ok := branchLists(n); ok {
				if t := firstText(list.Nodes); t != nil {
					return t
				}
				if elseList != nil {
					if t := firstText(elseList.Nodes); t != nil {
						return t
					}
				}
				return nil
			}
		}
	}
	return nil
}

func toolTag(tmpl *template.Template) string {
	if tmpl == nil || tmpl.Tree == nil {
		return "{"
	}
	node := findToolCallsIf(tmpl.Tree.Root.Nodes)
	if node == nil {
		return "{"
	}
	text := firstText(node.List.Nodes)
	if text == nil {
		return "{"
	}
	tag := strings.ReplaceAll(string(text.Text), "\r\n", "\n")
	tag, _, _ = strings.Cut(tag, "{")
	tag = strings.TrimSpace(tag)
	if tag == "" {
		return "{"
	}
	return tag
}

// ---- the parser ---------------------------------------------------------------------------

// nextTool: the tool whose name occurs earliest in buf (the longest at the same place) and where its name ends.
func nextTool(tools []Tool, buf string) (*Tool, int) {
	var found *Tool
	start, end := -1, -1
	for i := range tools {
		name := tools[i].Function.Name
		if name == "" {
			continue
		}
		pos := strings.Index(buf, name)
		if pos < 0 {
			continue
		}
		if start >= 0 && (pos > start || (pos == start && len(name) <= len(found.Function.Name))) {
			continue
		}
		found, start, end = &tools[i], pos, pos+len(name)
	}
	return found, end
}

func argumentsIn(tool *Tool, obj map[string]any) (map[string]any, bool) {
	asMap := func(v any) (map[string]any, bool) {
		if m, ok := v.(map[string]any); ok {
			return m, true
		}
		if s, ok := v.(string); ok {
			var m map[string]any
			if json.Unmarshal([]byte(s), &m) == nil {
				return m, true
			}
		}
		return nil, false
	}
	if _, named := obj["name"]; named {
		if m, ok := asMap(obj["arguments"]); ok {
			return m, true
		}
		if m, ok := asMap(obj["parameters"]); ok {
			return m, true
		}
		return nil, true
	}
	if m, ok := asMap(obj[tool.Function.Name]); ok {
		return m, true
	}
	for _, v := range obj {
		switch child := v.(type) {
		case map[string]any:
			if m, ok := argumentsIn(tool, child); ok {
				return m, true
			}
		case []any:
			for _, item := range child {
				if c, ok := item.(map[string]any); ok {
					if m, ok := argumentsIn(tool, c); ok {
						return m, true
					}
				}
			}
		}
	}
	return nil, false
}

// nextArguments: the arguments in the first balanced JSON object of buf that parses, and where it ends.
func nextArguments(tool *Tool, buf string) (map[string]any, int, bool) {
	depth, start := 0, -1
	inString, escaped := false, false
	for i := 0; i < len(buf); i++ {
		c := buf[i]
		switch {
		case escaped:
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '{':
			if depth == 0 {
				start = i
			}
			depth++
		case c == '}':
			depth--
			if depth == 0 && start >= 0 {
				var obj map[string]any
				if json.Unmarshal([]byte(buf[start:i+1]), &obj) != nil {
					start = -1
					continue
				}
				if args, ok := argumentsIn(tool, obj); ok {
					return args, i + 1, true
				}
				return obj, i + 1, true
			}
			if depth < 0 {
				depth = 0
			}
		}
	}
	return nil, 0, false
}

// parseToolCalls: the calls in a complete model output and the content before the tag.
func parseToolCalls(tag string, tools []Tool, output string) ([]ToolCall, string) {
	i := strings.Index(output, tag)
	if i < 0 {
		return nil, output
	}
	content := output[:i]
	if (tag == "{" || tag == "[") && strings.TrimSpace(content) != "" {
		return nil, output
	}
	buf := output[i:]
	var calls []ToolCall
	for {
		tool, nameEnd := nextTool(tools, buf)
		if tool == nil {
			break
		}
		args, argsEnd, ok := nextArguments(tool, buf)
		if !ok {
			break
		}
		end := max(nameEnd, argsEnd)
		call := ToolCall{Function: ToolCallFunction{Index: len(calls), Name: tool.Function.Name,
			Arguments: orderedMap[any]{vals: map[string]any{}}}}
		for k, v := range args { // Ollama copies a Go map: the order is lost here too
			call.Function.Arguments.keys = append(call.Function.Arguments.keys, k)
			call.Function.Arguments.vals[k] = v
		}
		calls = append(calls, call)
		buf = buf[end:]
	}
	return calls, content
}
