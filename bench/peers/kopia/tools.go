//go:build tools

// Package kopia pins the Kopia release bench/run.sh compares against (bench/peers.sh builds it).
package kopia

import _ "github.com/kopia/kopia"
