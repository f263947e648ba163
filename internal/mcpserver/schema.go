package mcpserver

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/google/jsonschema-go/jsonschema"
)

// inputSchema is the JSON schema of T, a tool's input struct: field
// descriptions from `jsonschema` tags (the SDK's inference), plus bounds
// and defaults from `schema` tags such as
// `schema:"minimum=1,maximum=3600,default=60"`, which the SDK's inference
// has no tag for. Keys: minimum, maximum, default, maxLength, pattern,
// enum (values separated by '|'). A bad tag is a programming error,
// reported when the server is built.
func inputSchema[T any]() (*jsonschema.Schema, error) {
	s, err := jsonschema.For[T](nil)
	if err != nil {
		return nil, err
	}
	t := reflect.TypeFor[T]()
	for i := range t.NumField() {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("schema")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		prop := s.Properties[name]
		if prop == nil {
			return nil, fmt.Errorf("%s.%s: no property %q", t, f.Name, name)
		}
		for kv := range strings.SplitSeq(tag, ",") {
			k, v, _ := strings.Cut(kv, "=")
			if err := applyBound(prop, k, v); err != nil {
				return nil, fmt.Errorf("%s.%s: schema tag %q: %w", t, f.Name, kv, err)
			}
		}
	}
	return s, nil
}

func applyBound(p *jsonschema.Schema, k, v string) error {
	num := func() (*float64, error) {
		f, err := strconv.ParseFloat(v, 64)
		return &f, err
	}
	var err error
	switch k {
	case "minimum":
		p.Minimum, err = num()
	case "maximum":
		p.Maximum, err = num()
	case "maxLength":
		var n int
		n, err = strconv.Atoi(v)
		p.MaxLength = &n
	case "pattern":
		p.Pattern = v
	case "enum":
		for e := range strings.SplitSeq(v, "|") {
			p.Enum = append(p.Enum, e)
		}
	case "default":
		// A JSON literal, or else a string.
		if json.Valid([]byte(v)) {
			p.Default = json.RawMessage(v)
		} else {
			p.Default, err = json.Marshal(v)
		}
	default:
		err = fmt.Errorf("unknown key %q", k)
	}
	return err
}
