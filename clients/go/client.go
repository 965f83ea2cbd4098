// Package concurrency is a Go client of the pac-concurrency HTTP API
// (docs/api.md): the specification's ConcurrencyDriver and QueueManager
// method sets, served by `pac-concurrency serve` over any of its backends.
//
// A Client is safe for use by many goroutines. Every call takes a context:
// its deadline bounds the call (Options.Timeout when it has none), and
// cancelling it ends the call with an *Error of code Cancelled. Every error
// is an *Error with a canonical code (errors.go).
//
// This file owns the connection: Options, New, and the one function that
// sends a request, retries what may be retried and decodes the answer.
package concurrency

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configure a Client.
type Options struct {
	// URL of the server: "http://host:port" or "https://host:port", with
	// an optional path prefix ("https://ci.example.com/pac"). Required.
	URL string
	// Token is sent as "Authorization: Bearer <token>" when not empty.
	Token string
	// TokenFile holds the token (one trailing newline is dropped); not
	// together with Token.
	TokenFile string
	// CAFile verifies an https server (PEM); empty: the system's roots.
	CAFile string
	// CertFile and KeyFile are a client certificate for mutual TLS (PEM).
	CertFile string
	KeyFile  string
	// ServerName overrides the name expected in the server's certificate.
	ServerName string
	// TLSConfig, when set, is used as it is instead of the four above.
	TLSConfig *tls.Config
	// Timeout bounds a call whose context has no deadline (default 30s;
	// negative: no bound). Watches and WaitForSlot are bounded only by
	// their context.
	Timeout time.Duration
	// MaxRetries is how often a call that found the server or its backend
	// unavailable is sent again, after pauses doubling from 100 ms, while
	// its context allows (default 3; negative: never). Every route of the
	// API is idempotent, so a retry never does a thing twice.
	MaxRetries int
	// HTTPClient, when set, sends the requests (its Transport is used as
	// it is; TLS options above are then ignored).
	HTTPClient *http.Client
}

// Client talks to one pac-concurrency server (or a load balancer in front
// of several: they share their backend and behave as one).
type Client struct {
	base       *url.URL
	token      string
	http       *http.Client
	timeout    time.Duration
	maxRetries int

	mu      sync.Mutex
	closed  bool
	cancels map[*watchState]context.CancelFunc
}

// New checks the options and returns a Client. It does not connect: the
// first call does.
func New(opts Options) (*Client, error) {
	const op = "New"
	if opts.URL == "" {
		return nil, invalidArgument(op, "URL: is empty (want http://host:port)")
	}
	if !strings.HasPrefix(opts.URL, "http://") && !strings.HasPrefix(opts.URL, "https://") {
		return nil, invalidArgument(op,
			"URL: %q must start with http:// or https://", opts.URL)
	}
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, invalidArgument(op, "URL: %q does not parse: %v", opts.URL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, invalidArgument(op,
			"URL: %q must start with http:// or https://", opts.URL)
	}
	if u.Host == "" {
		return nil, invalidArgument(op, "URL: %q has no host", opts.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, invalidArgument(op,
			"URL: %q must not have a query or a fragment", opts.URL)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	c := &Client{base: u, timeout: opts.Timeout, maxRetries: opts.MaxRetries,
		cancels: map[*watchState]context.CancelFunc{}}
	if c.timeout == 0 {
		c.timeout = 30 * time.Second
	}
	if c.maxRetries == 0 {
		c.maxRetries = 3
	}
	c.token = opts.Token
	if opts.TokenFile != "" {
		if opts.Token != "" {
			return nil, invalidArgument(op, "Token and TokenFile: give one of them")
		}
		b, err := os.ReadFile(opts.TokenFile)
		if err != nil {
			return nil, invalidArgument(op, "TokenFile: %v", err)
		}
		c.token = strings.TrimSuffix(string(b), "\n")
		if c.token == "" {
			return nil, invalidArgument(op, "TokenFile: %s is empty", opts.TokenFile)
		}
	}
	if strings.ContainsAny(c.token, "\r\n") {
		return nil, invalidArgument(op, "Token: holds a line break")
	}
	if opts.HTTPClient != nil {
		c.http = opts.HTTPClient
		return c, nil
	}
	tlsConfig := opts.TLSConfig
	if tlsConfig == nil {
		if tlsConfig, err = buildTLS(opts); err != nil {
			return nil, err
		}
	}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   10 * time.Second,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       4 * time.Second, // the server closes at 5 s
		ExpectContinueTimeout: time.Second,
	}
	c.http = &http.Client{Transport: transport}
	return c, nil
}

func buildTLS(opts Options) (*tls.Config, error) {
	const op = "New"
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: opts.ServerName}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, invalidArgument(op, "CAFile: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, invalidArgument(op, "CAFile: %s holds no PEM certificate", opts.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, invalidArgument(op, "CertFile and KeyFile: give both or neither")
	}
	if opts.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, invalidArgument(op, "CertFile/KeyFile: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Close ends the client's watches and closes its idle connections. Calls
// made after Close fail with FailedPrecondition.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	cancels := c.cancels
	c.cancels = map[*watchState]context.CancelFunc{}
	c.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
	c.http.CloseIdleConnections()
	return nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// pathOf joins escaped segments under the base path.
func (c *Client) pathOf(segments ...string) string {
	var b strings.Builder
	b.WriteString(c.base.Path)
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

func (c *Client) urlOf(path, rawQuery string) string {
	u := *c.base
	u.Path = path
	u.RawPath = ""
	u.RawQuery = rawQuery
	return u.String()
}

// call sends one request (retried while retryable) and decodes a 2xx
// answer into out. A body of nil sends no body.
func (c *Client) call(ctx context.Context, op, method, path, rawQuery string,
	body any, out any) error {
	if c.isClosed() {
		return &Error{Code: CodeFailedPrecondition, Op: op, Message: "the client is closed"}
	}
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return invalidArgument(op, "body: %v", err)
		}
	}
	pause := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := c.once(ctx, op, method, path, rawQuery, payload, out)
		if err == nil || !retryable(err) || attempt >= c.maxRetries || c.maxRetries < 0 {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err // the server's answer says more than "deadline"
		case <-t.C:
		}
		if pause *= 2; pause > 2*time.Second {
			pause = 2 * time.Second
		}
	}
}

func (c *Client) once(ctx context.Context, op, method, path, rawQuery string,
	payload []byte, out any) error {
	var reader io.Reader
	if payload != nil {
		reader = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.urlOf(path, rawQuery), reader)
	if err != nil {
		return invalidArgument(op, "request: %v", err)
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return transportError(ctx, op, c.base.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return transportError(ctx, op, c.base.Host, err)
	}
	if resp.StatusCode/100 != 2 {
		return answerError(op, resp, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &Error{Code: CodeInternal, Op: op, HTTPStatus: resp.StatusCode, Err: err,
			Message: fmt.Sprintf("the answer is not the JSON expected: %v", err)}
	}
	return nil
}

// answerError turns a non-2xx answer into an *Error.
func answerError(op string, resp *http.Response, data []byte) *Error {
	var body struct {
		Error struct {
			Code    Code   `json:"code"`
			Message string `json:"message"`
			Reason  string `json:"reason"`
		} `json:"error"`
	}
	e := &Error{Op: op, HTTPStatus: resp.StatusCode}
	if json.Unmarshal(data, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
		e.Reason = body.Error.Reason
		return e
	}
	// Not the server's JSON (a proxy's page, say): name the status.
	switch {
	case resp.StatusCode == 401:
		e.Code = CodeUnauthenticated
	case resp.StatusCode == 403:
		e.Code = CodePermissionDenied
	case resp.StatusCode == 404:
		e.Code = CodeNotFound
	case resp.StatusCode == 429:
		e.Code = CodeResourceExhausted
	case resp.StatusCode == 502, resp.StatusCode == 503, resp.StatusCode == 504:
		e.Code = CodeUnavailable
	case resp.StatusCode/100 == 4:
		e.Code = CodeInvalidArgument
	default:
		e.Code = CodeInternal
	}
	text := strings.TrimSpace(string(data))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	e.Message = fmt.Sprintf("HTTP %d from the server: %s", resp.StatusCode, text)
	return e
}

// transportError: no answer came. The context's end, a certificate that
// does not verify, or an unreachable server.
func transportError(ctx context.Context, op, host string, err error) *Error {
	if ctx.Err() != nil {
		return contextError(op, ctx.Err())
	}
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recordHeader tls.RecordHeaderError
	switch {
	case errors.As(err, &unknownAuthority), errors.As(err, &hostname),
		errors.As(err, &invalid):
		return &Error{Code: CodeUnauthenticated, Op: op, Err: err,
			Message: fmt.Sprintf("the certificate of %s does not verify: %v", host, err)}
	case errors.As(err, &recordHeader):
		return &Error{Code: CodeInvalidArgument, Op: op, Err: err,
			Message: fmt.Sprintf("%s does not speak TLS: use http:// (%v)", host, err)}
	}
	return &Error{Code: CodeUnavailable, Op: op, Err: err,
		Message: fmt.Sprintf("cannot reach %s: %v", host, err)}
}

// retryAfter reads a Retry-After of seconds (default 1 s).
func retryAfter(h http.Header) time.Duration {
	if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil && s > 0 && s < 60 {
		return time.Duration(s) * time.Second
	}
	return time.Second
}
