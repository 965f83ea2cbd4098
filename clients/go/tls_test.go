// TLS and bearer tokens against the real server: certificates made here
// with crypto/x509, a role-per-token file.

package concurrency_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	concurrency "github.com/pac-concurrency/pac-concurrency/clients/go"
	"github.com/pac-concurrency/pac-concurrency/clients/go/internal/testserver"
)

type pemPair struct{ cert, key string }

// makeCA returns a CA and a function that signs a certificate for
// 127.0.0.1 with it.
func makeCA(t *testing.T, name string) (pemPair, func(cn string, client bool) pemPair) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	testserver.Must(t, err, "key")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	testserver.Must(t, err, "CA certificate")
	caCert, _ := x509.ParseCertificate(der)
	ca := pemPair{cert: encode("CERTIFICATE", der), key: encodeKey(t, key)}
	serial := int64(2)
	sign := func(cn string, client bool) pemPair {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		testserver.Must(t, err, "key")
		serial++
		c := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		if client {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			c.IPAddresses = nil
		}
		d, err := x509.CreateCertificate(rand.Reader, c, caCert, &k.PublicKey, key)
		testserver.Must(t, err, "certificate")
		return pemPair{cert: encode("CERTIFICATE", d), key: encodeKey(t, k)}
	}
	return ca, sign
}

func encode(kind string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}))
}

func encodeKey(t *testing.T, k *ecdsa.PrivateKey) string {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	testserver.Must(t, err, "key")
	return encode("PRIVATE KEY", der)
}

func TestTLSAndBearerTokens(t *testing.T) {
	ca, sign := makeCA(t, "pac test CA")
	other, _ := makeCA(t, "another CA")
	server := sign("127.0.0.1", false)
	client := sign("controller", true)
	file := func(name, content string) string { return testserver.WriteFile(t, name, content) }
	caFile := file("ca.crt", ca.cert)
	tokens := file("tokens", "# token role\n"+
		"admin-token-0123456789 admin\n"+
		"read-token-0123456789 read\n")
	srv := testserver.Start(t, nil,
		"--tls-cert", file("server.crt", server.cert), "--tls-key", file("server.key", server.key),
		"--tls-client-ca", caFile, "--token-file", tokens)
	if !strings.HasPrefix(srv.URL, "https://") {
		t.Fatalf("the server serves %s", srv.URL)
	}
	ctx := timeout(t, 30*time.Second)
	certFile, keyFile := file("client.crt", client.cert), file("client.key", client.key)
	withToken := func(token string) *concurrency.Client {
		return newClient(t, concurrency.Options{URL: srv.URL, CAFile: caFile,
			CertFile: certFile, KeyFile: keyFile, Token: token})
	}
	repo := repoOf(t, "team/app", 1)

	admin := withToken("admin-token-0123456789")
	r, err := admin.Submit(ctx, repo, "team/pr-1", concurrency.SubmitOptions{})
	if err != nil || !r.Acquired {
		t.Fatalf("Submit over mutual TLS with the admin token = %+v, %v", r, err)
	}
	fromFile := newClient(t, concurrency.Options{URL: srv.URL, CAFile: caFile,
		CertFile: certFile, KeyFile: keyFile,
		TokenFile: file("admin.token", "admin-token-0123456789\n")})
	if _, err := fromFile.Status(ctx, repo.Key()); err != nil {
		t.Fatalf("the token from TokenFile: %v", err)
	}

	_, errMissing := withToken("").Status(ctx, repo.Key())
	_, errWrong := withToken("no-such-token").Status(ctx, repo.Key())
	for _, err := range []error{errMissing, errWrong} {
		if !errors.Is(err, concurrency.ErrUnauthenticated) {
			t.Fatalf("got %v; want UNAUTHENTICATED", err)
		}
	}
	if errMissing.Error() == errWrong.Error() {
		t.Fatalf("a missing and a wrong token say the same: %v", errMissing)
	}
	_, err = withToken("read-token-0123456789").Submit(ctx, repo, "team/pr-2",
		concurrency.SubmitOptions{})
	if !errors.Is(err, concurrency.ErrPermissionDenied) || !strings.Contains(err.Error(), "controller") {
		t.Fatalf("a submit with a read token: %v; want PERMISSION_DENIED naming the role", err)
	}

	wrongCA := newClient(t, concurrency.Options{URL: srv.URL,
		CAFile: file("other.crt", other.cert), CertFile: certFile, KeyFile: keyFile,
		Token: "admin-token-0123456789"})
	_, err = wrongCA.Status(ctx, repo.Key())
	if !errors.Is(err, concurrency.ErrUnauthenticated) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a server certificate of another CA: %v; want UNAUTHENTICATED about the certificate", err)
	}
	plain := newClient(t, concurrency.Options{
		URL: "http://" + strings.TrimPrefix(srv.URL, "https://"), Token: "admin-token-0123456789"})
	_, err = plain.Status(ctx, repo.Key())
	if err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("plain HTTP to the TLS port: %v; want an error saying to use https", err)
	}
	_, err = concurrency.New(concurrency.Options{URL: srv.URL, CAFile: file("empty.crt", "")})
	if !errors.Is(err, concurrency.ErrInvalidArgument) || !strings.Contains(err.Error(), "CAFile") {
		t.Fatalf("an empty CA file: %v", err)
	}
}
