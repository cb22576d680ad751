package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// maxSocketPath is the usable length of sun_path on Linux (108 bytes
// including the terminating NUL).
const maxSocketPath = 107

// logTailLines is how much of a command's output or log an error carries.
const logTailLines = 20

// cluster is a private PostgreSQL cluster driven through initdb and pg_ctl.
type cluster struct {
	initdb, pgCtl string
	dataDir       string // absolute
	shownDir      string // as the caller wrote it, for messages
	parent        string // holds dataDir, sockDir and logFile
	sockDir       string
	logFile       string
	port          int
	// runuser is set when running as root: initdb, pg_ctl and postgres
	// refuse to run as root, so they run as the postgres user instead.
	runuser string
}

// startCluster initialises dataDir if needed, starts the cluster on a free
// port (or adopts it if a previous run left it running) and creates database.
func startCluster(ctx context.Context, dataDir, database string, logger *slog.Logger) (*Postgres, error) {
	c, err := newCluster(dataDir)
	if err != nil {
		return nil, fmt.Errorf("private postgres cluster: %w", err)
	}
	if err := c.prepareDirs(ctx); err != nil {
		return nil, fmt.Errorf("private postgres cluster: %w", err)
	}
	if !fileExists(filepath.Join(c.dataDir, "PG_VERSION")) {
		logger.Info("initialising private PostgreSQL cluster", "dir", c.shownDir)
		if err := c.initDB(ctx); err != nil {
			return nil, fmt.Errorf("private postgres cluster: %w", err)
		}
	}

	started := false
	where := ""
	if port, ok := c.runningPort(ctx); ok {
		// A previous `make run` was killed before it could stop the cluster;
		// pg_ctl start would refuse, so carry on with the running server.
		c.port = port
		where = fmt.Sprintf("private cluster in %s on 127.0.0.1:%d (already running)", c.shownDir, c.port)
	} else {
		if c.port, err = freePort(); err != nil {
			return nil, fmt.Errorf("private postgres cluster: %w", err)
		}
		if err := c.start(ctx); err != nil {
			return nil, fmt.Errorf("private postgres cluster: %w", err)
		}
		started = true
		where = fmt.Sprintf("private cluster in %s on 127.0.0.1:%d", c.shownDir, c.port)
	}
	p := &Postgres{
		url:     localURL(c.addr(), database),
		where:   where,
		cluster: c,
	}

	cfg, err := pgx.ParseConfig(localURL(c.addr(), "postgres"))
	if err == nil {
		err = ensureDatabase(ctx, cfg, database)
	}
	if err != nil {
		if started {
			if stopErr := p.Stop(); stopErr != nil {
				logger.Warn("stop private PostgreSQL cluster", "err", stopErr)
			}
		}
		return nil, fmt.Errorf("private postgres cluster: %w", err)
	}
	return p, nil
}

func newCluster(dataDir string) (*cluster, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dataDir, err)
	}
	parent := filepath.Dir(abs)
	c := &cluster{
		dataDir:  abs,
		shownDir: dataDir,
		parent:   parent,
		sockDir:  filepath.Join(parent, "postgres-run"),
		logFile:  filepath.Join(parent, "postgres.log"),
	}
	if c.initdb, c.pgCtl, err = findPGBinaries(abs); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if c.runuser, err = exec.LookPath("runuser"); err != nil {
			return nil, fmt.Errorf("running as root, initdb needs runuser to switch to the postgres user: %w", err)
		}
	}
	return c, nil
}

// findPGBinaries locates initdb and pg_ctl from one installation: from PATH,
// else Debian's /usr/lib/postgresql/N/bin, preferring the major version an
// existing data directory was made with, then the highest.
func findPGBinaries(dataDir string) (initdb, pgCtl string, err error) {
	var dirs []string
	if ver, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION")); err == nil {
		dirs = append(dirs, filepath.Join("/usr/lib/postgresql", strings.TrimSpace(string(ver)), "bin"))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	globbed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(globbed, func(a, b string) int {
		return versionOf(b) - versionOf(a)
	})
	dirs = append(dirs, globbed...)

	for _, dir := range dirs {
		initdb, pgCtl := filepath.Join(dir, "initdb"), filepath.Join(dir, "pg_ctl")
		if isExecutable(initdb) && isExecutable(pgCtl) {
			return initdb, pgCtl, nil
		}
	}
	return "", "", errors.New("no initdb and pg_ctl found on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL or set DATABASE_URL")
}

// versionOf extracts N from /usr/lib/postgresql/N/bin; unparsable sorts last.
func versionOf(binDir string) int {
	n, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	if err != nil {
		return -1
	}
	return n
}

// prepareDirs creates the directories and log file, owned by the user the
// server will run as, and checks that user can reach them: a checkout under
// a 0700 home directory is a common way for root to end up here.
func (c *cluster) prepareDirs(ctx context.Context) error {
	if err := os.MkdirAll(c.parent, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", c.parent, err)
	}
	for _, dir := range []string{c.dataDir, c.sockDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	f, err := os.OpenFile(c.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", c.logFile, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create %s: %w", c.logFile, err)
	}
	if c.runuser == "" {
		return nil
	}

	pgUser, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root, initdb must run as the postgres user: %w", err)
	}
	uid, err := strconv.Atoi(pgUser.Uid)
	if err != nil {
		return fmt.Errorf("postgres uid %q: %w", pgUser.Uid, err)
	}
	gid, err := strconv.Atoi(pgUser.Gid)
	if err != nil {
		return fmt.Errorf("postgres gid %q: %w", pgUser.Gid, err)
	}
	for _, p := range []string{c.dataDir, c.sockDir, c.logFile} {
		if err := os.Chown(p, uid, gid); err != nil {
			return fmt.Errorf("chown %s to postgres: %w", p, err)
		}
	}
	if _, err := c.run(ctx, "test", "-w", c.sockDir, "-a", "-w", c.dataDir); err != nil {
		return fmt.Errorf("user postgres cannot write to %s (is a parent directory private to root?): %w", c.parent, err)
	}
	return nil
}

func (c *cluster) initDB(ctx context.Context) error {
	// --no-locale: an initdb under a non-UTF-8 LANG would otherwise refuse
	// -E UTF8. --no-sync: a development cluster is disposable.
	out, err := c.run(ctx, c.initdb, "-D", c.dataDir, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--no-locale")
	if err != nil {
		return fmt.Errorf("initdb -D %s: %w; output:\n%s", c.dataDir, err, tail(out, logTailLines))
	}
	return nil
}

func (c *cluster) start(ctx context.Context) error {
	sock := c.sockDir
	if len(sock)+len("/.s.PGSQL.65535") > maxSocketPath {
		// Too long for a Unix socket; everything here connects over TCP,
		// so run without one rather than fail.
		sock = ""
	}
	// pg_ctl hands -o to /bin/sh, hence the quoting.
	serverOpts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", c.port, shellQuote(sock))
	logStart := fileSize(c.logFile)
	out, err := c.run(ctx, c.pgCtl, "-D", c.dataDir, "-o", serverOpts, "-w", "-l", c.logFile, "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start -D %s on port %d: %w; output:\n%s\nlog %s:\n%s",
			c.dataDir, c.port, err, tail(out, logTailLines), c.logFile, logTail(c.logFile, logStart))
	}
	return nil
}

func (c *cluster) stop(ctx context.Context) error {
	logStart := fileSize(c.logFile)
	out, err := c.run(ctx, c.pgCtl, "-D", c.dataDir, "-m", "fast", "-w", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop -D %s: %w; output:\n%s\nlog %s:\n%s",
			c.dataDir, err, tail(out, logTailLines), c.logFile, logTail(c.logFile, logStart))
	}
	return nil
}

// runningPort reports the port of a server already running on dataDir.
func (c *cluster) runningPort(ctx context.Context) (int, bool) {
	// pg_ctl status also sees through a stale postmaster.pid.
	if _, err := c.run(ctx, c.pgCtl, "-D", c.dataDir, "status"); err != nil {
		return 0, false
	}
	pid, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	// Line 4 of postmaster.pid is the port.
	lines := strings.Split(string(pid), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil {
		return 0, false
	}
	return port, true
}

func (c *cluster) addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))
}

// run runs a command as the server's user and returns its combined output.
func (c *cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if c.runuser != "" {
		args = append([]string{"-u", "postgres", "--", name}, args...)
		name = c.runuser
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// The postgres user may not be allowed into the caller's working
	// directory, and initdb complains when it cannot return to it.
	cmd.Dir = c.parent
	// The postmaster pg_ctl leaves behind writes only to the log file, but
	// should it ever hold our pipe open, do not hang on it.
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// freePort asks the kernel for a free port. Another process could take it
// before the server binds it; that shows up as a clear pg_ctl start error.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logTail returns the last lines written to path after offset, so an error
// shows this run's messages rather than an earlier run's.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, f); err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	return tail(buf.Bytes(), logTailLines)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
