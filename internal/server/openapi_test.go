package server_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/smolvm/smolvm/internal/server"
)

// TestOpenAPIRoutes fails when the route table and openapi.json disagree:
// a registered route the document lacks, or a documented one that is not
// registered.
func TestOpenAPIRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(server.OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi = %q, want 3.1.x", doc.OpenAPI)
	}
	var documented []string
	for p, item := range doc.Paths {
		for m := range item {
			switch m {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
				documented = append(documented, strings.ToUpper(m)+" "+p)
			}
		}
	}
	var registered []string
	for _, r := range server.New(server.Config{Home: t.TempDir()}).Routes() {
		registered = append(registered, r.Method+" "+r.Pattern)
	}
	for _, r := range registered {
		if !slices.Contains(documented, r) {
			t.Errorf("route %s is registered but missing from openapi.json", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(registered, d) {
			t.Errorf("openapi.json documents %s, which the server does not register", d)
		}
	}
	if len(registered) < 30 {
		t.Errorf("only %d routes registered", len(registered))
	}
}

// TestOpenAPISchemas compiles every schema of the document (JSON Schema
// 2020-12, as OpenAPI 3.1 has it), so a broken $ref or keyword fails here.
func TestOpenAPISchemas(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]json.RawMessage `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(server.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	for name := range doc.Components.Schemas {
		if _, err := schemas(t).compile(name); err != nil {
			t.Errorf("schema %s: %v", name, err)
		}
	}
}

// schemaSet compiles the document's schemas once per test binary.
type schemaSet struct {
	mu   sync.Mutex
	c    *jsonschema.Compiler
	byID map[string]*jsonschema.Schema
}

var schemaOnce = sync.OnceValues(func() (*schemaSet, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(server.OpenAPI()))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("openapi.json", doc); err != nil {
		return nil, err
	}
	return &schemaSet{c: c, byID: map[string]*jsonschema.Schema{}}, nil
})

func schemas(t *testing.T) *schemaSet {
	t.Helper()
	s, err := schemaOnce()
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return s
}

func (s *schemaSet) compile(name string) (*jsonschema.Schema, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch := s.byID[name]; sch != nil {
		return sch, nil
	}
	sch, err := s.c.Compile("openapi.json#/components/schemas/" + name)
	if err == nil {
		s.byID[name] = sch
	}
	return sch, err
}

// conforms fails the test when body does not validate against the
// document's schema name: the server's real answers checked against the
// contract clients are generated from.
func conforms(t *testing.T, name string, body []byte) {
	t.Helper()
	sch, err := schemas(t).compile(name)
	if err != nil {
		t.Fatalf("schema %s: %v", name, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s: not JSON: %v: %s", name, err, body)
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("response does not match schema %s: %v\n%s", name, err, body)
	}
}
