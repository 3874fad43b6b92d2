package runtimeapi

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// DefaultTimeout bounds one exchange with a socket when the caller's
// context has no deadline: HAProxy answers in milliseconds, a hung socket
// must not hang a sync.
const DefaultTimeout = 30 * time.Second

// prompt is what HAProxy prints after each answer in prompt mode.
var prompt = []byte("\n> ")

// Client talks to HAProxy's runtime API over a unix socket.
type Client struct {
	// Socket is the path of the stats socket (it needs "level admin").
	Socket string
}

var _ Interface = (*Client)(nil)

// New returns a client of the runtime API socket at path.
func New(socket string) *Client {
	return &Client{Socket: socket}
}

func dial(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to HAProxy socket %s: %w", socket, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, err
	}
	// Close the connection when ctx is cancelled so blocked reads return.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return &ctxConn{Conn: conn, stop: stop}, nil
}

type ctxConn struct {
	net.Conn
	stop func() bool
}

func (c *ctxConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

// exchange sends lines in prompt mode over one connection and returns one
// answer per line. Writing happens beside reading: with a large batch,
// HAProxy's answers would otherwise fill the socket buffers while the
// commands are still being written, and both sides would wait forever.
func (c *Client) exchange(ctx context.Context, lines []string) ([]string, error) {
	conn, err := dial(ctx, c.Socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	var buf bytes.Buffer
	buf.WriteString("prompt\n")
	for _, l := range lines {
		buf.WriteString(l)
		buf.WriteByte('\n')
	}
	buf.WriteString("quit\n")
	writeErr := make(chan error, 1)
	go func() {
		_, err := conn.Write(buf.Bytes())
		writeErr <- err
	}()

	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64*1024), maxAnswer)
	sc.Split(new(answerSplitter).split)
	read := func() (string, error) {
		if sc.Scan() {
			return sc.Text(), nil
		}
		if err := sc.Err(); err != nil {
			return "", err
		}
		return "", io.ErrUnexpectedEOF
	}
	// The answer to "prompt" is the first prompt alone.
	if _, err := read(); err != nil {
		return nil, fmt.Errorf("HAProxy socket %s: enter prompt mode: %w", c.Socket, err)
	}
	answers := make([]string, 0, len(lines))
	for range lines {
		a, err := read()
		if err != nil {
			return answers, fmt.Errorf("HAProxy socket %s: read answer %d of %d: %w", c.Socket, len(answers)+1, len(lines), err)
		}
		answers = append(answers, a)
	}
	if err := <-writeErr; err != nil {
		return answers, fmt.Errorf("HAProxy socket %s: write: %w", c.Socket, err)
	}
	return answers, nil
}

// maxAnswer bounds one answer ("show servers state" of 100,000 servers
// is about 10 MB).
const maxAnswer = 256 << 20

// splitAnswers splits the prompt-mode stream into answers: each ends with
// the prompt "\n> " (an empty answer is the prompt alone).
func splitAnswers(data []byte, atEOF bool) (advance int, token []byte, err error) {
	return new(answerSplitter).split(data, atEOF)
}

// answerSplitter is splitAnswers for one stream. bufio.Scanner calls the
// split function again with the whole pending answer after each read, so
// a stateless search rescans it every time: a 15 MB "show map" arrives in
// about a hundred reads and was searched 700 MB deep. Remembering how far
// the pending answer has been searched makes reading linear.
type answerSplitter struct {
	// searched is how many bytes of the pending answer hold no prompt
	// start, except possibly its last len(prompt)-1 bytes.
	searched int
}

func (s *answerSplitter) split(data []byte, atEOF bool) (advance int, token []byte, err error) {
	from := min(max(s.searched-len(prompt)+1, 0), len(data))
	if i := bytes.Index(data[from:], prompt); i >= 0 {
		i += from
		s.searched = 0
		return i + len(prompt), data[:i], nil
	}
	s.searched = len(data)
	if atEOF && len(data) > 0 {
		return 0, nil, io.ErrUnexpectedEOF
	}
	return 0, nil, nil
}

// Run implements Interface.
func (c *Client) Run(ctx context.Context, b *Batch) error {
	if b.Len() == 0 {
		return nil
	}
	if err := b.validate(); err != nil {
		return err
	}
	answers, err := c.exchange(ctx, b.Commands())
	if err != nil {
		return err
	}
	return batchResult(b, answers)
}

// batchResult maps the answers of a batch to a *BatchError or nil.
func batchResult(b *Batch, answers []string) error {
	var be BatchError
	for i, cmd := range b.cmds {
		if err := classify(cmd, answers[i]); err != nil {
			be.Failed = append(be.Failed, &CommandError{Index: i, Command: cmd.String(), Response: firstLine(trim(answers[i])), Err: err})
		}
	}
	if len(be.Failed) > 0 {
		return &be
	}
	return nil
}

func trim(s string) string { return string(bytes.TrimSpace([]byte(s))) }

// ShowServers implements Interface.
func (c *Client) ShowServers(ctx context.Context, backend string) ([]ServerStatus, error) {
	cmd := "show servers state"
	if backend != "" {
		if err := checkToken("backend", backend); err != nil {
			return nil, err
		}
		cmd += " " + backend
	}
	answers, err := c.exchange(ctx, []string{cmd})
	if err != nil {
		return nil, err
	}
	return parseServersState(answers[0])
}

// ShowStat implements Interface.
func (c *Client) ShowStat(ctx context.Context, backends ...string) ([]StatRow, error) {
	if len(backends) == 0 {
		answers, err := c.exchange(ctx, []string{"show stat"})
		if err != nil {
			return nil, err
		}
		return parseStat(answers[0])
	}
	cmds := make([]string, len(backends))
	for i, be := range backends {
		if err := checkToken("backend", be); err != nil {
			return nil, err
		}
		// Types -1 and server id -1: the backend row and every server.
		cmds[i] = "show stat " + be + " -1 -1"
	}
	answers, err := c.exchange(ctx, cmds)
	if err != nil {
		return nil, err
	}
	var rows []StatRow
	for _, a := range answers {
		if strings.TrimSpace(a) == noSuchProxy {
			continue
		}
		r, err := parseStat(a)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

// noSuchProxy is HAProxy's answer to "show stat <name>" for a name that
// is neither a frontend nor a backend.
const noSuchProxy = "No such proxy."

// ShowBackends implements Interface.
func (c *Client) ShowBackends(ctx context.Context) ([]string, error) {
	answers, err := c.exchange(ctx, []string{"show backend"})
	if err != nil {
		return nil, err
	}
	return parseBackends(answers[0])
}

// ShowMap implements Interface.
func (c *Client) ShowMap(ctx context.Context, mapFile string) ([]MapEntry, error) {
	if err := checkFile(mapFile); err != nil {
		return nil, err
	}
	answers, err := c.exchange(ctx, []string{"show map " + mapFile})
	if err != nil {
		return nil, err
	}
	entries, err := parseMap(answers[0])
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", mapFile, err)
	}
	return entries, nil
}

// ShowACL implements Interface.
func (c *Client) ShowACL(ctx context.Context, aclFile string) ([]string, error) {
	if err := checkFile(aclFile); err != nil {
		return nil, err
	}
	answers, err := c.exchange(ctx, []string{"show acl " + aclFile})
	if err != nil {
		return nil, err
	}
	values, err := parseACL(answers[0])
	if err != nil {
		return nil, fmt.Errorf("acl %s: %w", aclFile, err)
	}
	return values, nil
}

// ShowMaps implements Interface.
func (c *Client) ShowMaps(ctx context.Context) ([]string, error) {
	answers, err := c.exchange(ctx, []string{"show map"})
	if err != nil {
		return nil, err
	}
	return parseMaps(answers[0])
}

// Master talks to the master CLI of an HAProxy in master-worker mode (the
// socket given with -S).
type Master struct {
	Socket string
}

var _ MasterInterface = (*Master)(nil)

// NewMaster returns a client of the master CLI socket at path.
func NewMaster(socket string) *Master {
	return &Master{Socket: socket}
}

// command sends one command in non-interactive mode: the master answers and
// closes the connection.
func (m *Master) command(ctx context.Context, cmd string) (string, error) {
	conn, err := dial(ctx, m.Socket)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", fmt.Errorf("HAProxy master socket %s: %s: %w", m.Socket, cmd, err)
	}
	// The master answers a non-interactive client and closes only once the
	// client has closed its sending side.
	if cw, ok := conn.(*ctxConn).Conn.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return "", fmt.Errorf("HAProxy master socket %s: %s: %w", m.Socket, cmd, err)
		}
	}
	out, err := io.ReadAll(conn)
	if err != nil {
		return string(out), fmt.Errorf("HAProxy master socket %s: %s: %w", m.Socket, cmd, err)
	}
	return string(out), nil
}

// ShowProc implements MasterInterface.
func (m *Master) ShowProc(ctx context.Context) (*ProcInfo, error) {
	out, err := m.command(ctx, "show proc")
	if err != nil {
		return nil, err
	}
	p, err := parseShowProc(out)
	if err != nil {
		return nil, fmt.Errorf("HAProxy master socket %s: %w", m.Socket, err)
	}
	return p, nil
}

// Reload implements MasterInterface.
func (m *Master) Reload(ctx context.Context) error {
	out, err := m.command(ctx, "reload")
	if err != nil {
		return err
	}
	if t := trim(out); t != "" {
		return fmt.Errorf("HAProxy master socket %s: reload answered %q: %w", m.Socket, firstLine(t), responseError(t))
	}
	return nil
}
