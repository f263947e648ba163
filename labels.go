package smolvm

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of VMConfig.Labels.
const (
	MaxLabels        = 64
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 255
)

var labelKeyPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)

// WithLabels adds to VMConfig.Labels.
func WithLabels(labels map[string]string) Option {
	return withConfig(func(c *VMConfig) {
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		maps.Copy(c.Labels, labels)
	})
}

// WithLabelFilter makes List return only the VMs whose labels match every
// selector: "KEY" (the VM has the label) or "KEY=VALUE" (with that value).
// A malformed selector makes List fail with ErrInvalid.
func WithLabelFilter(selectors ...string) Option {
	return func(s *settings) { s.labelFilter = append(s.labelFilter, selectors...) }
}

// ValidateLabels checks labels: at most MaxLabels; keys of 1 to
// MaxLabelKeyLen letters, digits, '.', '_', '-' or '/', starting and
// ending with a letter or digit; values of at most MaxLabelValueLen bytes
// of printable UTF-8 (spaces allowed, no control characters). Each
// problem is a *ValidationError.
func ValidateLabels(labels map[string]string) error {
	var errs []error
	if len(labels) > MaxLabels {
		errs = append(errs, &ValidationError{Field: "labels", Value: len(labels), Reason: fmt.Sprintf("at most %d labels", MaxLabels)})
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := validateLabelKey(k); err != nil {
			errs = append(errs, err)
		}
		if err := validateLabelValue(k, labels[k]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func validateLabelKey(k string) error {
	if len(k) > MaxLabelKeyLen || !labelKeyPattern.MatchString(k) {
		return &ValidationError{Field: "label key", Value: fmt.Sprintf("%.80q", k),
			Reason: fmt.Sprintf("use 1-%d letters, digits, '.', '_', '-' or '/', starting and ending with a letter or digit", MaxLabelKeyLen)}
	}
	return nil
}

func validateLabelValue(k, v string) error {
	bad := func(reason string) error {
		return &ValidationError{Field: "label value", Value: fmt.Sprintf("%.80q", k), Reason: reason}
	}
	if len(v) > MaxLabelValueLen {
		return bad(fmt.Sprintf("at most %d bytes", MaxLabelValueLen))
	}
	if !utf8.ValidString(v) {
		return bad("must be UTF-8")
	}
	if strings.IndexFunc(v, func(r rune) bool { return !unicode.IsPrint(r) && r != ' ' }) >= 0 {
		return bad("must be printable (no control characters or newlines)")
	}
	return nil
}

// labelSelector is one parsed WithLabelFilter selector.
type labelSelector struct {
	key, value string
	hasValue   bool
}

func parseLabelFilter(sels []string) ([]labelSelector, error) {
	var out []labelSelector
	for _, s := range sels {
		k, v, hasValue := strings.Cut(s, "=")
		if err := validateLabelKey(k); err != nil {
			return nil, fmt.Errorf("label filter %q: %w (use KEY or KEY=VALUE)", s, err)
		}
		if hasValue {
			if err := validateLabelValue(k, v); err != nil {
				return nil, fmt.Errorf("label filter %q: %w", s, err)
			}
		}
		out = append(out, labelSelector{key: k, value: v, hasValue: hasValue})
	}
	return out, nil
}

// matchLabels reports whether labels satisfy every selector.
func matchLabels(labels map[string]string, sels []labelSelector) bool {
	for _, s := range sels {
		v, ok := labels[s.key]
		if !ok || (s.hasValue && v != s.value) {
			return false
		}
	}
	return true
}
