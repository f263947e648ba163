package mcpserver_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/mcpserver"
)

// schema is the part of a JSON schema the tests look at.
type schema struct {
	Type       string             `json:"type"`
	Required   []string           `json:"required"`
	Properties map[string]*schema `json:"properties"`
	Desc       string             `json:"description"`
	Minimum    *float64           `json:"minimum"`
	Maximum    *float64           `json:"maximum"`
	Default    json.RawMessage    `json:"default"`
	Enum       []any              `json:"enum"`
	Pattern    string             `json:"pattern"`
}

// TestTools checks what an agent reads before its first call: every tool
// there, described, with input schemas whose properties all say what
// they are, and the bounds and defaults the server enforces.
func TestTools(t *testing.T) {
	c := inProcess(t, mcpserver.Config{Home: t.TempDir()})
	ctx := testContext(t, time.Minute)
	res, err := c.cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]schema{}
	for _, tool := range res.Tools {
		if len(tool.Description) < 40 {
			t.Errorf("%s: description %q is too thin for an agent", tool.Name, tool.Description)
		}
		b, _ := json.Marshal(tool.InputSchema)
		var s schema
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		if s.Type != "object" {
			t.Errorf("%s: input schema type %q", tool.Name, s.Type)
		}
		for name, p := range s.Properties {
			if p.Desc == "" {
				t.Errorf("%s.%s: no description", tool.Name, name)
			}
		}
		if tool.OutputSchema == nil {
			t.Errorf("%s: no output schema", tool.Name)
		}
		got[tool.Name] = s
	}
	want := []string{"create_sandbox", "delete_sandbox", "delete_snapshot", "fork_sandbox", "list_sandboxes", "read_file", "run_command", "snapshot_sandbox", "write_file"}
	var names []string
	for n := range got {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, want) {
		t.Fatalf("tools %v, want %v", names, want)
	}
	for _, tc := range []struct {
		tool, prop string
		required   bool
		min, max   float64 // 0 = not checked
		def        string
	}{
		{"run_command", "sandbox", true, 0, 0, ""},
		{"run_command", "command", true, 0, 0, ""},
		{"run_command", "timeout_seconds", false, 0.1, 3600, "60"},
		{"run_command", "max_output_bytes", false, 1, 1 << 20, "32768"},
		{"read_file", "max_bytes", false, 1, 1 << 20, "65536"},
		{"read_file", "path", true, 0, 0, ""},
		{"write_file", "encoding", false, 0, 0, `"text"`},
		{"write_file", "mode", false, 0, 0, `"0644"`},
		{"create_sandbox", "vcpus", false, 0, 64, "0"},
		{"create_sandbox", "keep", false, 0, 0, "false"},
		{"fork_sandbox", "count", false, 1, 8, "1"},
		{"snapshot_sandbox", "name", true, 0, 0, ""},
	} {
		s := got[tc.tool]
		p := s.Properties[tc.prop]
		if p == nil {
			t.Errorf("%s: no property %s", tc.tool, tc.prop)
			continue
		}
		if r := slices.Contains(s.Required, tc.prop); r != tc.required {
			t.Errorf("%s.%s: required = %v, want %v", tc.tool, tc.prop, r, tc.required)
		}
		if tc.max != 0 && (p.Minimum == nil || *p.Minimum != tc.min || p.Maximum == nil || *p.Maximum != tc.max) {
			t.Errorf("%s.%s: bounds %v..%v, want %v..%v", tc.tool, tc.prop, p.Minimum, p.Maximum, tc.min, tc.max)
		}
		if tc.def != "" && string(p.Default) != tc.def {
			t.Errorf("%s.%s: default %s, want %s", tc.tool, tc.prop, p.Default, tc.def)
		}
	}
	if e := got["write_file"].Properties["encoding"].Enum; len(e) != 2 {
		t.Errorf("write_file.encoding enum %v", e)
	}
}

// TestBadInput: wrong arguments and unknown sandboxes come back as tool
// errors that say what to do, never as protocol failures, and make
// nothing.
func TestBadInput(t *testing.T) {
	home := t.TempDir()
	c := inProcess(t, mcpserver.Config{Home: home})
	ctx := testContext(t, time.Minute)
	for _, tc := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{"run_command", map[string]any{"command": "true"}, "sandbox"},
		{"run_command", map[string]any{"sandbox": "nope", "command": "true"}, `no sandbox "nope" that this session may use`},
		{"run_command", map[string]any{"sandbox": "x", "command": "true", "timeout_seconds": 99999}, "maximum"},
		{"run_command", map[string]any{"sandbox": "x", "command": 7}, "command"},
		{"run_command", map[string]any{"sandbox": "x", "command": " "}, "command is empty"},
		{"run_command", map[string]any{"sandbox": "x", "command": "true", "bogus": 1}, "bogus"},
		{"read_file", map[string]any{"sandbox": "x", "path": "/etc/passwd", "max_bytes": 0}, "minimum"},
		{"write_file", map[string]any{"sandbox": "x", "path": "/a", "content": "x", "encoding": "hex"}, "encoding"},
		{"write_file", map[string]any{"sandbox": "x", "path": "/a", "content": "x", "mode": "rwx"}, "mode"},
		{"write_file", map[string]any{"sandbox": "x", "path": "/a", "content": "%%%", "encoding": "base64"}, "base64"},
		{"create_sandbox", map[string]any{"name": "../etc"}, "name"},
		{"create_sandbox", map[string]any{"vcpus": -1}, "minimum"},
		{"create_sandbox", map[string]any{"from_snapshot": "secret"}, `no snapshot "secret"`},
		{"fork_sandbox", map[string]any{"sandbox": "x", "count": 100}, "maximum"},
		{"delete_sandbox", map[string]any{"sandbox": "x"}, "no sandbox"},
		{"delete_snapshot", map[string]any{"name": "x"}, "no snapshot"},
		{"snapshot_sandbox", map[string]any{"sandbox": "x", "name": "a/b"}, "name"},
	} {
		c.fails(ctx, tc.tool, tc.args, tc.want)
	}
	if ents, _ := filepathGlob(home + "/vms/*"); len(ents) != 0 {
		t.Errorf("bad input made VMs: %v", ents)
	}
}
