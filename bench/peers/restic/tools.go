//go:build tools

// Package restic pins the restic release bench/run.sh compares against (bench/peers.sh builds it).
package restic

import _ "github.com/restic/restic/cmd/restic"
