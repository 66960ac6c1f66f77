package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoBrowser is returned, wrapped, by Screenshot when none of the
// browsers it knows is on PATH. On Debian the package chromium provides
// one.
var ErrNoBrowser = errors.New("no headless browser: none of chromium, chromium-browser, google-chrome, google-chrome-stable is on PATH (on Debian: apt-get install chromium)")

// browsers are the names Screenshot looks for on PATH, in order.
var browsers = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// screenshotTimeout bounds one run of the browser when ctx does not bound
// it sooner: a cold start takes about a second, a busy CI machine several.
const screenshotTimeout = 60 * time.Second

// Screenshot loads page, an HTML file, in headless Chromium with a window
// of width × height CSS pixels and saves what the window shows as the PNG
// file png, replacing it; the PNG is width × height pixels whatever the
// display's scale. The browser runs with a fresh profile in a temporary
// directory, without its sandbox (which cannot start as root or in most
// containers; the page is a local file), for at most a minute or until ctx
// is done. Screenshot waits for it and kills whatever is left of its
// process group, so it leaves no process behind. It returns an error
// wrapping ErrNoBrowser when no browser is found.
func Screenshot(ctx context.Context, page, png string, width, height int) error {
	if width <= 0 || height <= 0 {
		return fmt.Errorf("screenshot %s: window size %d×%d is not positive", page, width, height)
	}
	browser, err := findBrowser()
	if err != nil {
		return fmt.Errorf("screenshot %s: %w", page, err)
	}
	pagePath, err := filepath.Abs(page)
	if err != nil {
		return fmt.Errorf("screenshot %s: %w", page, err)
	}
	if _, err := os.Stat(pagePath); err != nil {
		return fmt.Errorf("screenshot: %w", err)
	}
	// The browser's working directory is not ours to rely on.
	pngPath, err := filepath.Abs(png)
	if err != nil {
		return fmt.Errorf("screenshot %s: %w", page, err)
	}
	// A PNG left from an earlier run must not pass for this one's.
	if err := os.Remove(pngPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("screenshot %s: %w", page, err)
	}
	tmp, err := os.MkdirTemp("", "chunksync-screenshot-")
	if err != nil {
		return fmt.Errorf("screenshot %s: %w", page, err)
	}
	defer os.RemoveAll(tmp)

	ctx, cancel := context.WithTimeout(ctx, screenshotTimeout)
	defer cancel()
	pageURL := (&url.URL{Scheme: "file", Path: filepath.ToSlash(pagePath)}).String()
	cmd := exec.CommandContext(ctx, browser,
		"--headless",
		"--no-sandbox",
		"--disable-gpu",
		// /dev/shm is 64 MiB in many containers, too small for Chromium.
		"--disable-dev-shm-usage",
		"--hide-scrollbars",
		"--force-device-scale-factor=1",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-extensions",
		"--disable-background-networking",
		"--disable-component-update",
		"--disable-sync",
		"--mute-audio",
		"--user-data-dir="+filepath.Join(tmp, "profile"),
		"--window-size="+strconv.Itoa(width)+","+strconv.Itoa(height),
		"--screenshot="+pngPath,
		pageURL,
	)
	// The crash reporter keeps its database under the configuration
	// directory, not the profile: pointing that at tmp as well leaves the
	// user's own Chromium untouched.
	cmd.Env = append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(tmp, "config"),
		"XDG_CACHE_HOME="+filepath.Join(tmp, "cache"),
	)
	// The browser forks a zygote, a GPU process and renderers; in a process
	// group of their own they can all be killed at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Children hold the output pipe for a moment after the browser exits;
	// one that hangs on to it must not hang Wait.
	cmd.WaitDelay = 5 * time.Second
	var out tailWriter
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	if cmd.Process != nil {
		// Whatever of the group outlived the browser goes with it. (Its
		// crash reporter, in a session of its own, exits when the browser
		// does.)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("screenshot %s with %s: stopped after %v: %w%s", page, browser, time.Since(start).Round(time.Millisecond), ctx.Err(), out.String())
	}
	if err != nil {
		return fmt.Errorf("screenshot %s with %s: %w%s", page, browser, err, out.String())
	}
	if fi, err := os.Stat(pngPath); err != nil || fi.Size() == 0 {
		return fmt.Errorf("screenshot %s with %s: no PNG written to %s%s", page, browser, pngPath, out.String())
	}
	return nil
}

func findBrowser() (string, error) {
	for _, name := range browsers {
		if path, err := exec.LookPath(name); err == nil {
			return path, nil
		}
	}
	return "", ErrNoBrowser
}

// tailWriter keeps the last lines the browser printed, for an error
// message, leaving out the D-Bus complaints that every headless run makes.
type tailWriter struct {
	buf bytes.Buffer
}

const tailBytes = 2048

func (w *tailWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if w.buf.Len() > 4*tailBytes {
		keep := w.buf.Bytes()[w.buf.Len()-2*tailBytes:]
		w.buf = *bytes.NewBuffer(append([]byte(nil), keep...))
	}
	return len(p), nil
}

// String gives the kept lines as the tail of an error message: a colon,
// then the lines, or nothing at all.
func (w *tailWriter) String() string {
	var lines []string
	for _, line := range strings.Split(w.buf.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.Contains(line, "dbus") {
			lines = append(lines, line)
		}
	}
	text := strings.Join(lines, "\n")
	if len(text) > tailBytes {
		text = "…" + text[len(text)-tailBytes:]
	}
	if text == "" {
		return ""
	}
	return ":\n" + text
}
