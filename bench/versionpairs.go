package bench

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// XTools and XToolsVersions are the data set of the re-sync benchmarks:
// consecutive releases of golang.org/x/tools, about 10 MB of source each,
// whose differences are those of a real project between two releases.
const XTools = "golang.org/x/tools"

// XToolsVersions are the releases of XTools that the re-sync benchmarks
// compare, each with the next.
var XToolsVersions = []string{"v0.26.0", "v0.27.0", "v0.28.0"}

// tarModTime is the modification time of every entry of a module tar, so
// that the tar depends on the module's content only.
var tarModTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// ModuleTars writes, for each version of module, a tar of the module's files
// to outDir and returns the tars' paths in the order of versions. A tar holds
// the files of the module's zip as the module proxy serves it, in sorted
// order, named without the "module@version/" prefix, with mode 0644, owner
// 0:0 and a fixed time: the same version always gives the same bytes.
//
// The zips come from `go mod download`, run with GOMODCACHE=cacheDir (the
// go command on PATH, the proxy in the environment), so a cacheDir that
// outlives the call saves the downloads of later calls. Files in cacheDir
// are left writable, so that it can be removed like any directory.
func ModuleTars(ctx context.Context, cacheDir, outDir, module string, versions ...string) ([]string, error) {
	zips, err := downloadModules(ctx, cacheDir, module, versions)
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(versions))
	for i, v := range versions {
		name := strings.ReplaceAll(module, "/", "_") + "@" + v + ".tar"
		paths[i] = filepath.Join(outDir, name)
		if err := zipToTar(zips[i], paths[i], module+"@"+v+"/"); err != nil {
			return nil, fmt.Errorf("module tar %s@%s: %w", module, v, err)
		}
	}
	return paths, nil
}

// downloadModules returns the paths of the module zips of the versions.
func downloadModules(ctx context.Context, cacheDir, module string, versions []string) ([]string, error) {
	args := []string{"mod", "download", "-json"}
	for _, v := range versions {
		args = append(args, module+"@"+v)
	}
	abs, err := filepath.Abs(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", module, err)
	}
	work, err := os.MkdirTemp("", "chunksync-modules-")
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", module, err)
	}
	defer os.RemoveAll(work)
	cmd := exec.CommandContext(ctx, "go", args...)
	// A directory without go.mod, so that no module or workspace around the
	// caller takes part; -modcacherw so that the cache can be deleted.
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "GOMODCACHE="+abs, "GOFLAGS=-modcacherw", "GOWORK=off", "GO111MODULE=on")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	zips := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m struct{ Version, Zip, Error string }
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go mod download output: %w", err)
		}
		if m.Error != "" {
			return nil, fmt.Errorf("download %s@%s: %s", module, m.Version, m.Error)
		}
		zips[m.Version] = m.Zip
	}
	paths := make([]string, len(versions))
	for i, v := range versions {
		if paths[i] = zips[v]; paths[i] == "" {
			return nil, fmt.Errorf("download %s@%s: go mod download named no zip", module, v)
		}
	}
	return paths, nil
}

// zipToTar writes the files of the zip at src whose names start with prefix
// to a new tar at dst, sorted and with the prefix removed.
func zipToTar(src, dst, prefix string) error {
	zr, err := zip.OpenReader(src)
	if err != nil {
		return err
	}
	defer zr.Close()
	files := make([]*zip.File, 0, len(zr.File))
	for _, f := range zr.File {
		if !strings.HasPrefix(f.Name, prefix) || strings.HasSuffix(f.Name, "/") {
			return fmt.Errorf("zip entry %q is not a file under %s", f.Name, prefix)
		}
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })

	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	bw := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(bw)
	for _, f := range files {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     strings.TrimPrefix(f.Name, prefix),
			Size:     int64(f.UncompressedSize64),
			Mode:     0o644,
			ModTime:  tarModTime,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		rc, err := f.Open()
		if err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		_, err = io.Copy(tw, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Close()
}
