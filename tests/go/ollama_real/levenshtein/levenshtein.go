// Package levenshtein stands in for github.com/agnivade/levenshtein, which Ollama's template
// package imports to name a template after the closest built-in one (not used by these tests).
// Written for Tuneloom's tests.
package levenshtein

// ComputeDistance is the edit distance between two strings (by bytes is enough here).
func ComputeDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
