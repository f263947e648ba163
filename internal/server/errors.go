package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"strings"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/api"
)

// apiError is an error the server itself decided on (bad request, no
// route), with its code.
type apiError struct {
	code  string
	msg   string
	field string
	err   error
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.err }

func invalid(field, format string, args ...any) error {
	return &apiError{code: api.CodeInvalid, field: field, msg: fmt.Sprintf(format, args...)}
}

func errNoRoute(r *http.Request) error {
	return &apiError{code: api.CodeNotFound, msg: "no route " + r.Method + " " + r.URL.Path + " (see /openapi.json for the routes)"}
}

// detail maps err to its wire form: the SDK's error set through
// api.CodeOf, the image package's and the OS's not-found too.
func detail(err error) api.ErrorDetail {
	d := api.ErrorDetail{Code: api.CodeOf(err), Message: err.Error()}
	var ae *apiError
	var ve *smolvm.ValidationError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		d.Code, d.Field = ae.code, ae.field
	case errors.As(err, &mbe):
		d.Code = api.CodeTooLarge
		d.Message = fmt.Sprintf("request body over its limit of %d bytes", mbe.Limit)
	case d.Code != api.CodeInternal:
	case errors.Is(err, image.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		d.Code = api.CodeNotFound
	case errors.Is(err, image.ErrInvalid), errors.Is(err, image.ErrChecksum):
		d.Code = api.CodeInvalid
	}
	fileErrno(err, &d)
	if d.Code == api.CodeInvalid && d.Field == "" && errors.As(err, &ve) {
		d.Field = ve.Field
		if f, ok := wireFields[ve.Field]; ok {
			d.Field = f
		}
	}
	return d
}

// wireFields names the SDK's ValidationError fields as the API's JSON
// spells them, so that Field points at what the client sent.
var wireFields = map[string]string{
	"memory": "memory_mib", "disk": "disk_mib", "env name": "env", "boot timeout": "boot_timeout_seconds",
	"reuse disk": "reuse_disk", "kernel path": "kernel_path", "rootfs path": "rootfs_path", "initrd path": "initrd_path",
	"kernel/rootfs": "kernel_path", "mount": "mounts", "mount host path": "mounts", "guest port": "guest_port",
	"host port": "host_port", "host address": "host_addr", "snapshot name": "name", "stop timeout": "timeout_seconds",
	"timeout": "timeout_seconds", "guest path": "path", "destination": "path", "tar entry": "tar", "terminal size": "width",
	"allow-domain": "allow_domains", "allow-cidr": "allow_cidrs", "deny-cidr": "deny_cidrs", "egress policy": "no_egress",
	"dns upstream": "dns_upstream",
}

// writeError answers err as {"error": {...}} with its code's status.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	d := detail(err)
	writeJSON(w, api.Status(d.Code), api.ErrorBody{Error: d})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// decode reads r's JSON body into v: at most MaxJSONBody bytes, one JSON
// value, no unknown fields. An empty body is an error unless optional.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		if optional {
			return nil
		}
		return invalid("", "this route needs a JSON body (Content-Type: application/json)")
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return &apiError{code: api.CodeUnsupported, msg: fmt.Sprintf("Content-Type %q: send application/json", ct)}
		}
	}
	body := http.MaxBytesReader(w, r.Body, MaxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) && optional {
			return nil
		}
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return invalid("", "the body holds more than one JSON value")
	}
	return nil
}

// jsonError says what was wrong with a body, naming the field.
func jsonError(err error) error {
	var mbe *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return err
	case errors.As(err, &syn):
		return &apiError{code: api.CodeInvalid, err: err, msg: fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, err)}
	case errors.As(err, &typ):
		return &apiError{code: api.CodeInvalid, err: err, field: typ.Field, msg: fmt.Sprintf("field %q: want a JSON %s, got %s", typ.Field, typ.Type, typ.Value)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &apiError{code: api.CodeInvalid, err: err, msg: "truncated JSON body"}
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		f = strings.Trim(f, `"`)
		return &apiError{code: api.CodeInvalid, err: err, field: f, msg: fmt.Sprintf("unknown field %q (see /openapi.json for this body's fields)", f)}
	}
	return &apiError{code: api.CodeInvalid, err: err, msg: "bad JSON body: " + msg}
}
