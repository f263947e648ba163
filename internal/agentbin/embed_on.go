//go:build embedagent

package agentbin

import _ "embed"

// smolvm-agent is built by scripts/build.sh before smolvm itself.
//
//go:embed smolvm-agent
var embedded []byte
