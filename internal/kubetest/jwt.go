package kubetest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// SigningKey is the key the API server signs ServiceAccount tokens with.
func (c *Cluster) SigningKey() *rsa.PrivateKey { return c.saKey }

// Resign returns token (a JWT the API server issued) with its claims
// changed by edit and signed with key (RS256, the header kept): with the
// API server's own key a token it would accept but for what edit changed
// (an expiry in the past, say), with another key a forgery.
func Resign(t testing.TB, token string, key *rsa.PrivateKey, edit func(claims map[string]any)) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("kubetest: %d parts in a JWT, want 3", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("kubetest: JWT payload: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("kubetest: JWT claims: %v", err)
	}
	edit(claims)
	payload, err = json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatalf("kubetest: signing JWT: %v", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}
