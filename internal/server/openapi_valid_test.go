package server_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/smolvm/smolvm/internal/server"
)

// TestOpenAPIValid: the document is valid OpenAPI (kin-openapi's loader
// and validator), every $ref resolves.
func TestOpenAPIValid(t *testing.T) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(server.OpenAPI())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Errorf("validate: %v", err)
	}
	if doc.OpenAPIMajorMinor() != "3.1" {
		t.Errorf("openapi %q, want 3.1", doc.OpenAPI)
	}
}

// TestOpenAPIValidCatches: the check above would see a broken reference.
func TestOpenAPIValidCatches(t *testing.T) {
	broken := bytes.Replace(server.OpenAPI(), []byte(`"#/components/schemas/Mount"`), []byte(`"#/components/schemas/NoSuchSchema"`), 1)
	doc, err := openapi3.NewLoader().LoadFromData(broken)
	if err == nil {
		err = doc.Validate(context.Background())
	}
	if err == nil {
		t.Error("a document with a dangling $ref passed")
	}
}
