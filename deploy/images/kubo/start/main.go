// Command casync-kubo-start is the entrypoint of the casync/kubo image (FROM scratch, so no shell).
//
// It does what ipfs/config/configure.sh does for the official ipfs/kubo image, then becomes
// the Kubo daemon: on the first start it initialises the repo ($IPFS_PATH) with
// $CASYNC_KUBO_INIT_PROFILE (default "server"); on every start it applies casync's production
// settings with `ipfs config`, so they are re-applied while the node keeps its identity; then
// it execs `ipfs ARGS...` (the image's CMD: daemon --migrate=true --enable-gc). Arguments that
// do not start with "daemon" are passed to ipfs without configuring anything.
//
// The knobs are configure.sh's environment variables, with the same defaults and checks;
// tests/test_kubo_image.py compares the config this produces with configure.sh's.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

var (
	maddrChars = regexp.MustCompile(`^/[A-Za-z0-9./:_-]*$`)
	authChars  = regexp.MustCompile(`^(bearer|basic):[A-Za-z0-9._~+/=:@-]*$`)
	digits     = regexp.MustCompile(`^[0-9]+$`)
	unspecAPI  = []string{"/ip4/0.0.0.0/", "/ip6/::/", "/ip6/0:0:0:0:0:0:0:0/", "/ip6/::0/"}
)

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "casync-kubo-config: "+format+"\n", args...)
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// ipfsBin is $IPFS_BIN, else the ipfs next to this executable, else ipfs in PATH.
func ipfsBin() string {
	if v := os.Getenv("IPFS_BIN"); v != "" {
		return v
	}
	if self, err := os.Executable(); err == nil {
		cand := filepath.Join(filepath.Dir(self), "ipfs")
		if _, err := os.Stat(cand); err == nil {
			return cand
		}
	}
	return "ipfs"
}

func run(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ipfs %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// maddrList turns "a b" into a JSON list, accepting only plain multiaddr characters.
func maddrList(list string) (string, error) {
	var quoted []string
	for _, a := range strings.Fields(list) {
		if !maddrChars.MatchString(a) {
			return "", fmt.Errorf("not a multiaddr (or unexpected characters): %s", a)
		}
		quoted = append(quoted, `"`+a+`"`)
	}
	if len(quoted) == 0 {
		return "", errors.New("empty multiaddr list")
	}
	return "[" + strings.Join(quoted, ",") + "]", nil
}

// settings returns the (key, JSON value) pairs to apply, in configure.sh's order.
func settings() ([][2]string, error) {
	var s [][2]string
	set := func(k, v string) { s = append(s, [2]string{k, v}) }

	set("Datastore.StorageMax", `"`+env("CASYNC_KUBO_STORAGE_MAX", "100GB")+`"`)
	wm := env("CASYNC_KUBO_GC_WATERMARK", "90")
	if !digits.MatchString(wm) {
		return nil, errors.New("CASYNC_KUBO_GC_WATERMARK must be an integer percent")
	}
	set("Datastore.StorageGCWatermark", wm)
	set("Datastore.GCPeriod", `"`+env("CASYNC_KUBO_GC_PERIOD", "1h")+`"`)

	apiAddrs := env("CASYNC_KUBO_API_ADDRS", "/ip4/127.0.0.1/tcp/5001")
	for _, a := range strings.Fields(apiAddrs) {
		for _, bad := range unspecAPI {
			if strings.HasPrefix(a, bad) {
				return nil, fmt.Errorf("refusing to bind the RPC API to %s (admin-level API; use 127.0.0.1 or the pod IP)", a)
			}
		}
	}
	api, err := maddrList(apiAddrs)
	if err != nil {
		return nil, err
	}
	set("Addresses.API", api)
	if auth := os.Getenv("CASYNC_KUBO_API_AUTH"); auth != "" {
		if !authChars.MatchString(auth) {
			return nil, errors.New("CASYNC_KUBO_API_AUTH must be bearer:TOKEN or basic:USER:PASSWORD (plain characters)")
		}
		set("API.Authorizations", `{"casync": {"AuthSecret": "`+auth+`", "AllowedPaths": ["/api/v0"]}}`)
	}

	gw, err := maddrList(env("CASYNC_KUBO_GATEWAY_ADDRS", "/ip4/0.0.0.0/tcp/8080"))
	if err != nil {
		return nil, err
	}
	set("Addresses.Gateway", gw)
	set("Gateway.NoFetch", "true")
	set("Gateway.DeserializedResponses", "true")
	set("Gateway.NoDNSLink", "true")
	set("Gateway.ExposeRoutingAPI", "false")
	set("Gateway.RootRedirect", `""`)

	set("Import.CidVersion", "1")
	set("Import.UnixFSRawLeaves", "true")
	set("Import.HashFunction", `"blake3"`)

	set("AutoTLS.Enabled", "false")
	set("Plugins.Plugins", `{"telemetry": {"Config": {"Mode": "off"}}}`)

	if v := os.Getenv("CASYNC_KUBO_MAX_MEMORY"); v != "" {
		set("Swarm.ResourceMgr.MaxMemory", `"`+v+`"`)
	}
	if v := os.Getenv("CASYNC_KUBO_ROUTING_TYPE"); v != "" {
		set("Routing.Type", `"`+v+`"`)
	}
	return s, nil
}

func configure(bin string) error {
	// Check every knob before touching the repo.
	s, err := settings()
	if err != nil {
		return err
	}
	repo := env("IPFS_PATH", filepath.Join(os.Getenv("HOME"), ".ipfs"))
	if _, err := os.Stat(filepath.Join(repo, "config")); errors.Is(err, os.ErrNotExist) {
		profile := env("CASYNC_KUBO_INIT_PROFILE", "server")
		say("no repo at %s: ipfs init --profile %s", repo, profile)
		if err := os.MkdirAll(repo, 0o700); err != nil {
			return err
		}
		if _, err := run(bin, "init", "--profile", profile, "--empty-repo"); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if _, err := run(bin, "config", "profile", "apply", "server"); err != nil {
		return err
	}
	if spec, _ := run(bin, "config", "Datastore.Spec"); !strings.Contains(spec, "flatfs") {
		say("WARNING: repo datastore is not flatfs; casync expects flatfs (chosen at init)")
	}
	for _, kv := range s {
		if _, err := run(bin, "config", "--json", kv[0], kv[1]); err != nil {
			return err
		}
	}
	say("applied casync Kubo configuration to %s", repo)
	return nil
}

func main() {
	bin := ipfsBin()
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "daemon" {
		if err := configure(bin); err != nil {
			say("error: %v", err)
			os.Exit(1)
		}
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		say("error: ipfs binary not found (%s)", bin)
		os.Exit(1)
	}
	err = syscall.Exec(path, append([]string{"ipfs"}, args...), os.Environ())
	say("error: exec %s: %v", path, err)
	os.Exit(1)
}
