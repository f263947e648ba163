package smolvm_test

import (
	"archive/zip"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestImportGraphLean: a program that only creates VMs links no registry
// client, Docker config code or CLI framework (they come with image/oci
// and cmd/smolvm, which wire them in explicitly).
func TestImportGraphLean(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/smolvm/smolvm").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	for _, bad := range []string{
		"github.com/google/go-containerregistry/",
		"github.com/docker/",
		"github.com/sirupsen/logrus",
		"github.com/spf13/cobra",
		"github.com/smolvm/smolvm/image/oci",
	} {
		for _, d := range deps {
			if strings.HasPrefix(d, bad) {
				t.Errorf("the root package depends on %s", d)
			}
		}
	}
	t.Logf("%d packages in go list -deps github.com/smolvm/smolvm", len(deps))
}

// readmeProgram returns the Go program in the README's Library section.
func readmeProgram(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, lib, ok := strings.Cut(string(data), "\n## Library\n")
	_, code, ok2 := strings.Cut(lib, "```go\n")
	code, _, ok3 := strings.Cut(code, "```\n")
	if !ok || !ok2 || !ok3 || !strings.Contains(code, "package main") {
		t.Fatal("README.md has no complete Go program in its Library section")
	}
	return code
}

// TestReadmeProgram builds the README's library program in a fresh module
// outside the repository, as a user would, and runs it with no agent
// configured and no smolvm on PATH: the SDK has to build its own guest
// agent, and a real VM has to boot with it and answer. Two ways to get
// the module: a replace directive pointing at this checkout (source found
// where it was compiled from), and a released version from a module proxy
// built with -trimpath (source found with go mod download).
func TestReadmeProgram(t *testing.T) {
	requireVM(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	checkout, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("replace", func(t *testing.T) {
		goMod := "module example.com/hello\n\ngo 1.26.8\n\nrequire github.com/smolvm/smolvm v0.0.0\n\nreplace github.com/smolvm/smolvm => " + checkout + "\n"
		// Modules from the local module cache only: a test reaches no
		// proxy, and a module missing there fails the build instead.
		runReadmeProgram(t, goBin, checkout, goMod, nil, []string{"GOPROXY=off"})
	})
	t.Run("release", func(t *testing.T) {
		// A proxy serving this checkout as v0.0.1, in front of the local
		// module cache's download directory (itself a valid GOPROXY), so
		// nothing is fetched from the network; a module cache of its own,
		// where the module lands read-only as from any proxy.
		const version = "v0.0.1"
		proxy := moduleProxy(t, checkout, version)
		realCache, err := exec.Command(goBin, "env", "GOMODCACHE").Output()
		if err != nil {
			t.Fatal(err)
		}
		modCache := t.TempDir()
		env := []string{
			"GOPROXY=file://" + proxy + ",file://" + filepath.Join(strings.TrimSpace(string(realCache)), "cache", "download"),
			"GOMODCACHE=" + modCache, "GOSUMDB=off",
			// As TestMain builds the CLI (static, -trimpath), so the Go
			// build cache has most packages already.
			"CGO_ENABLED=0",
		}
		t.Cleanup(func() {
			clean := exec.Command(goBin, "clean", "-modcache")
			clean.Env = append(os.Environ(), env...)
			if out, err := clean.CombinedOutput(); err != nil {
				t.Errorf("go clean -modcache: %v\n%s", err, out)
			}
		})
		goMod := "module example.com/hello\n\ngo 1.26.8\n\nrequire github.com/smolvm/smolvm " + version + "\n"
		runReadmeProgram(t, goBin, checkout, goMod, []string{"-trimpath"}, env)
	})
}

// runReadmeProgram builds the README program in a module with goMod and
// runs it as a user without smolvm would; env is added to both.
func runReadmeProgram(t *testing.T, goBin, checkout, goMod string, buildFlags, env []string) {
	mod := t.TempDir()
	// smolvm's go.sum covers every module the program needs, so nothing
	// is looked up in the checksum database.
	sum, err := os.ReadFile(filepath.Join(checkout, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"go.mod": goMod, "go.sum": string(sum), "main.go": readmeProgram(t)} {
		if err := os.WriteFile(filepath.Join(mod, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := testContext(t, 10*time.Minute)
	prog := filepath.Join(mod, "hello")
	build := exec.CommandContext(ctx, goBin, append(append([]string{"build"}, buildFlags...), "-o", prog, ".")...)
	build.Dir = mod
	build.Env = append(append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off"), env...)
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the README program: %v\n%s", err, out)
	}
	if fi, err := os.Stat(prog); err == nil {
		t.Logf("README program: %.1f MiB, built in %v", float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond))
	}

	// A user's environment: Go and the system on PATH, no smolvm, no
	// SMOLVM_AGENT; a state directory and an agent cache of its own (the
	// Go build cache stays shared, or this would compile for minutes).
	home, cache := t.TempDir(), t.TempDir()
	goCache, err := exec.Command(goBin, "env", "GOCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Dir(goBin) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, dir := range filepath.SplitList(path) {
		for _, name := range []string{"smolvm", "smolvm-agent"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				t.Skipf("%s is on PATH in %s; this test needs a machine without one", name, dir)
			}
		}
	}
	var runEnv []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "SMOLVM_AGENT", "SMOLVM_HOME", "XDG_CACHE_HOME", "GOCACHE":
		default:
			runEnv = append(runEnv, kv)
		}
	}
	runEnv = append(append(runEnv, "PATH="+path, "SMOLVM_HOME="+home, "XDG_CACHE_HOME="+cache, "GOCACHE="+strings.TrimSpace(string(goCache))), env...)
	t.Cleanup(func() {
		// The program deletes its VM; whatever it could not is a failure.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		vms, _ := smolvm.List(ctx, smolvm.WithHome(home))
		for _, info := range vms {
			t.Errorf("the README program left VM %s (%s)", info.ID, info.State)
			if vm, err := smolvm.FromID(ctx, info.ID, smolvm.WithHome(home)); err == nil {
				vm.Delete(ctx)
			}
		}
	})
	runProg := func(what string, env []string) {
		t.Helper()
		run := exec.CommandContext(ctx, prog)
		run.Dir = mod
		run.Env = env
		start := time.Now()
		out, err := run.Output()
		if err != nil {
			stderr := ""
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("README program, %s: %v\nstdout: %s\nstderr: %s", what, err, out, stderr)
		}
		t.Logf("%s took %v:\n%s", what, time.Since(start).Round(time.Millisecond), out)
		if !strings.HasPrefix(string(out), "Linux ") || !strings.HasSuffix(string(out), "\n0") {
			t.Errorf("%s: output %q: want `uname -a` from the guest, then exit code 0", what, out)
		}
	}
	runProg("first run (agent build, image build, boot, command)", runEnv)
	agents, _ := filepath.Glob(filepath.Join(cache, "smolvm", "agent", "smolvm-agent-*"))
	if len(agents) != 1 {
		t.Errorf("agents built into the user's cache: %v; want one", agents)
	}
	t.Logf("agent: %v", agents)

	// Once built, the agent is found again without a Go toolchain.
	noGo := append(slices.Clone(runEnv), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if _, err := os.Stat("/usr/bin/go"); err == nil {
		t.Skip("/usr/bin/go exists: cannot run without a Go toolchain")
	}
	runProg("second run, no go on PATH", noGo)
	if again, _ := filepath.Glob(filepath.Join(cache, "smolvm", "agent", "smolvm-agent-*")); !slices.Equal(again, agents) {
		t.Errorf("second run changed the agents: %v, was %v", again, agents)
	}
}

// moduleProxy writes a GOPROXY directory (file://) serving the module in
// dir as version: its go.mod, and a zip of its files as the go command
// makes them (no VCS metadata, no nested modules, no build output).
func moduleProxy(t *testing.T, dir, version string) string {
	t.Helper()
	const modPath = "github.com/smolvm/smolvm"
	proxy := t.TempDir()
	at := filepath.Join(proxy, filepath.FromSlash(modPath), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	goMod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(at, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if p == dir {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") || rel == "bin" {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || rel == filepath.Join("internal", "agentbin", "smolvm-agent") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		w, err := zw.Create(modPath + "@" + version + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	})
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"list":            version + "\n",
		version + ".info": `{"Version":"` + version + `","Time":"2026-12-01T00:00:00Z"}`,
		version + ".mod":  string(goMod),
	} {
		if err := os.WriteFile(filepath.Join(at, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return proxy
}

// TestNoAgentNoToolchain: with no agent to be found and no Go toolchain to
// build one, create fails up front, says how to name an agent, and
// leaves nothing behind.
func TestNoAgentNoToolchain(t *testing.T) {
	requireVM(t)
	for _, dir := range []string{"/usr/bin", "/bin"} {
		for _, name := range []string{"go", "smolvm", "smolvm-agent"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				t.Skipf("%s is in %s; this test needs a PATH without it", name, dir)
			}
		}
	}
	t.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") // QEMU, no go
	t.Setenv("SMOLVM_AGENT", "")
	t.Setenv("GOROOT", "")
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	home := t.TempDir()
	ctx := testContext(t, time.Minute)
	vm, err := smolvm.New(ctx, smolvm.WithHome(home))
	if err == nil {
		vm.Delete(ctx)
		t.Fatal("created a VM with no agent")
	}
	t.Logf("create: %v", err)
	for _, want := range []string{"no Go toolchain", "SMOLVM_AGENT", "smolvm.WithAgent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if vms, err := smolvm.List(ctx, smolvm.WithHome(home)); err != nil || len(vms) != 0 {
		t.Errorf("after the failed create: %v, %v; want no VMs", vms, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "vms")); len(ents) != 0 {
		t.Errorf("the failed create left %d VM directories", len(ents))
	}
}
