// Package controlplane starts a real Kubernetes control plane for
// integration tests: an etcd and the patched kube-apiserver, both built by
// `make build` into _output/bin, listening on loopback ports nobody else uses.
//
// A test calls Start and gets a client-go clientset and a kubeconfig file
// (for binaries such as kube-proxy) that authenticate as a cluster admin with
// a static bearer token over TLS, with certificates generated for this
// control plane only. Cleanup (registered with t.Cleanup) stops both
// processes by PID and removes every file the control plane wrote.
//
// Binaries are looked up in $KH_BIN_DIR (the Makefile exports it), else in
// the repository's _output/bin. When one is missing the test fails and
// says to run `make build`.
//
//	cp := controlplane.Start(t, controlplane.Config{ServiceClusterIPRange: "10.96.0.0/24"})
//	svc, err := cp.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
//	cmd := exec.Command(kubeProxy, "--kubeconfig="+cp.Kubeconfig, ...)
//
// Each Start runs its own etcd and kube-apiserver (about 5 seconds on an
// idle machine), so tests that can share a cluster should share one. New
// is Start for a program: it returns errors, and the caller calls Cleanup.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kube-haproxy.io/kube-haproxy/internal/kit"
)

// Config says what control plane a test needs.
type Config struct {
	// ServiceClusterIPRange is kube-apiserver's --service-cluster-ip-range:
	// one CIDR, or an IPv4 and an IPv6 CIDR separated by a comma for a
	// dual-stack cluster. Required.
	ServiceClusterIPRange string
	// ExtraAPIServerArgs are appended to the kube-apiserver command line
	// (a later flag wins over an earlier one).
	ExtraAPIServerArgs []string
	// StartTimeout bounds the wait for etcd and for kube-apiserver to become
	// ready; 3 minutes when zero (kube-apiserver is slow on a busy machine).
	StartTimeout time.Duration
	// Dir, when set, holds the certificates, data and logs instead of a new
	// temporary directory (a long-running cluster keeps them in its state
	// directory, so nothing outlives a crash elsewhere). It is created, and
	// removed by Cleanup.
	Dir string
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// Client is a clientset for a cluster admin.
	Client kubernetes.Interface
	// RESTConfig is the configuration Client was built from.
	RESTConfig *rest.Config
	// Kubeconfig is the path of a kubeconfig file for the same user.
	Kubeconfig string
	// URL is kube-apiserver's https URL.
	URL string
	// Dir is the temporary directory holding certificates, data and logs;
	// removed by Cleanup.
	Dir string

	etcd, apiserver *process
	cleanupOnce     sync.Once
}

// Start starts etcd and kube-apiserver, waits until kube-apiserver is ready
// and serves the default "kubernetes" Service, and registers Cleanup with t.
func Start(t kit.T, cfg Config) *ControlPlane {
	t.Helper()
	cp, err := New(cfg)
	if cp != nil {
		t.Cleanup(cp.Cleanup)
	}
	if err != nil {
		t.Fatalf("controlplane: %v", err)
	}
	return cp
}

// New is Start for a program: it returns an error instead of failing a
// test. The returned ControlPlane, even with an error, holds what started;
// the caller calls Cleanup.
func New(cfg Config) (*ControlPlane, error) {
	if cfg.ServiceClusterIPRange == "" {
		return nil, errors.New("Config.ServiceClusterIPRange is required")
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 3 * time.Minute
	}
	etcdBin, err := FindBinary("etcd")
	if err != nil {
		return nil, err
	}
	apiserverBin, err := FindBinary("kube-apiserver")
	if err != nil {
		return nil, err
	}

	dir := cfg.Dir
	if dir == "" {
		dir, err = os.MkdirTemp("", "kh-controlplane-")
	} else {
		err = os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return nil, fmt.Errorf("creating its directory: %w", err)
	}
	cp := &ControlPlane{Dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()

	var etcdURL string
	err = retryPortClash(func() (*process, error) {
		var err error
		etcdURL, err = cp.startEtcd(ctx, etcdBin)
		return cp.etcd, err
	})
	if err != nil {
		return cp, fmt.Errorf("%w\n%s", err, cp.etcd.logTail())
	}
	err = retryPortClash(func() (*process, error) {
		return cp.apiserver, cp.startAPIServer(ctx, apiserverBin, etcdURL, cfg)
	})
	if err != nil {
		return cp, fmt.Errorf("%w\n%s", err, cp.apiserver.logTail())
	}
	return cp, nil
}

// retryPortClash runs start up to three times while it fails because
// another process took one of its free ports between the check and the
// bind.
func retryPortClash(start func() (*process, error)) error {
	for attempt := 1; ; attempt++ {
		p, err := start()
		if err == nil || attempt == 3 || p == nil || !strings.Contains(p.logTail(), "address already in use") {
			return err
		}
		p.stop()
	}
}

// Cleanup stops kube-apiserver and etcd and removes their files. It is safe
// to call more than once.
func (cp *ControlPlane) Cleanup() {
	cp.cleanupOnce.Do(func() {
		// kube-apiserver first: it would only log errors without etcd.
		cp.apiserver.stop()
		cp.etcd.stop()
		_ = os.RemoveAll(cp.Dir)
	})
}

// APIServerLog returns the end of kube-apiserver's log, for test failure
// messages.
func (cp *ControlPlane) APIServerLog() string { return cp.apiserver.logTail() }

func (cp *ControlPlane) startEtcd(ctx context.Context, bin string) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	cp.etcd, err = startProcess(bin, filepath.Join(cp.Dir, "etcd.log"),
		"--name=controlplane",
		"--data-dir="+filepath.Join(cp.Dir, "etcd-data"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=controlplane="+peerURL,
		"--log-level=warn",
		// Test data need not survive a power cut; fsync dominates etcd's
		// latency on a shared disk.
		"--unsafe-no-fsync",
	)
	if err != nil {
		return "", fmt.Errorf("starting etcd: %w", err)
	}
	err = cp.etcd.waitHTTP(ctx, http.DefaultClient, clientURL+"/health", nil, func(body string) bool {
		return strings.Contains(body, `"health":"true"`)
	})
	if err != nil {
		return "", fmt.Errorf("etcd at %s not healthy: %w", clientURL, err)
	}
	return clientURL, nil
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, bin, etcdURL string, cfg Config) error {
	certs, err := newPKI(cp.Dir)
	if err != nil {
		return err
	}
	token, err := randomToken()
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(cp.Dir, "tokens.csv")
	// token,user,uid,"groups": system:masters passes every authorizer.
	if err := os.WriteFile(tokenFile, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	cp.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])

	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--cert-dir=" + filepath.Join(cp.Dir, "cert-dir"),
		"--tls-cert-file=" + certs.servingCert,
		"--tls-private-key-file=" + certs.servingKey,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + certs.serviceAccount,
		"--service-account-signing-key-file=" + certs.serviceAccount,
		"--service-cluster-ip-range=" + cfg.ServiceClusterIPRange,
		"--allow-privileged=true",
		"--profiling=false",
		"--v=2",
	}
	args = append(args, cfg.ExtraAPIServerArgs...)
	cp.apiserver, err = startProcess(bin, filepath.Join(cp.Dir, "kube-apiserver.log"), args...)
	if err != nil {
		return fmt.Errorf("starting kube-apiserver: %w", err)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certs.caCertPEM)
	httpClient := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	header := http.Header{"Authorization": []string{"Bearer " + token}}
	err = cp.apiserver.waitHTTP(ctx, httpClient, cp.URL+"/readyz", header, func(body string) bool { return body == "ok" })
	if err != nil {
		return fmt.Errorf("kube-apiserver at %s not ready: %w", cp.URL, err)
	}

	cp.RESTConfig = &rest.Config{
		Host:            cp.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: certs.caCertPEM},
		QPS:             100,
		Burst:           200,
	}
	client, err := kubernetes.NewForConfig(cp.RESTConfig)
	if err != nil {
		return fmt.Errorf("building clientset: %w", err)
	}
	cp.Client = client
	if err := cp.writeKubeconfig(token, certs.caCertPEM); err != nil {
		return err
	}

	// Readiness does not wait for the bootstrap controller: once the
	// "kubernetes" Service exists, ClusterIP allocation works.
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if cp.apiserver.exited() {
			return false, errors.New("kube-apiserver exited")
		}
		_, err := client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the default/kubernetes Service: %w", err)
	}
	return nil
}

func (cp *ControlPlane) writeKubeconfig(token string, caPEM []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["controlplane"] = &clientcmdapi.Cluster{Server: cp.URL, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["admin@controlplane"] = &clientcmdapi.Context{Cluster: "controlplane", AuthInfo: "admin"}
	cfg.CurrentContext = "admin@controlplane"
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, cp.Kubeconfig); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}

// BinDir returns where `make build` puts the binaries: $KH_BIN_DIR, else
// _output/bin of the repository holding this package.
func BinDir() string {
	if dir := os.Getenv("KH_BIN_DIR"); dir != "" {
		return dir
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("_output", "bin")
	}
	// file is <repo>/internal/kit/controlplane/controlplane.go
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "_output", "bin")
}

// FindBinary returns the path of a binary `make build` produces, or an
// error that says where it was looked for and how to build it.
func FindBinary(name string) (string, error) {
	path := filepath.Join(BinDir(), name)
	info, err := os.Stat(path)
	if err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
		return path, nil
	}
	return "", fmt.Errorf("%s not found at %s: run make build", name, path)
}

// Binary returns the path of a binary `make build` produces, and fails
// the test without it.
func Binary(t kit.T, name string) string {
	t.Helper()
	path, err := FindBinary(name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return path
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// process is a child process with its output in a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done is closed
}

func startProcess(bin, logPath string, args ...string) (*process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating log: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Die with the test binary even when it is killed before Cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	p := &process{name: filepath.Base(bin), cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to terminate, and kills it if it has not within
// 15 seconds.
func (p *process) stop() {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitHTTP polls url until ready accepts the body of a 200 answer, the
// process exits, or ctx ends.
func (p *process) waitHTTP(ctx context.Context, client *http.Client, url string, header http.Header, ready func(string) bool) error {
	var last string
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		return resp.StatusCode == http.StatusOK && ready(string(body)), nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w (last answer: %s)", err, last)
	}
	return err
}

// logTail returns the last lines of the process log.
func (p *process) logTail() string {
	if p == nil {
		return ""
	}
	data, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return fmt.Sprintf("--- last lines of %s:\n%s", p.log, strings.Join(lines, "\n"))
}
