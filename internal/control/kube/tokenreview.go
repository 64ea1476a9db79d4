// Package kube is the control plane's Kubernetes side, on client-go: the
// TokenReview authenticator for Certify and the shared-informer Source of
// services' endpoints for Watch. Only quicmesh-control links it.
package kube

import (
	"context"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/quicmesh/quicmesh/internal/control"
)

// TokenReviewer authenticates ServiceAccount tokens with the API server's
// TokenReview API, which checks the signature, the expiry, that the
// service account (and the pod the token is bound to) still exists, and
// the audience.
type TokenReviewer struct {
	client   kubernetes.Interface
	audience string
}

var _ control.TokenReviewer = (*TokenReviewer)(nil)

// NewTokenReviewer returns a reviewer that accepts only tokens issued for
// audience, so a token meant for another service (or the API server
// itself) cannot be replayed to get a certificate.
func NewTokenReviewer(client kubernetes.Interface, audience string) *TokenReviewer {
	return &TokenReviewer{client: client, audience: audience}
}

const saUserPrefix = "system:serviceaccount:"

// Review returns the service account token belongs to. A token the API
// server does not authenticate for our audience, or that is not a service
// account's, is an error wrapping control.ErrTokenRejected.
func (r *TokenReviewer) Review(ctx context.Context, token string) (control.ServiceAccount, error) {
	review, err := r.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return control.ServiceAccount{}, fmt.Errorf("kube: TokenReview: %w", err)
	}
	st := review.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return control.ServiceAccount{}, fmt.Errorf("%w: %s", control.ErrTokenRejected, reason)
	}
	// The API server only authenticates a token for the audiences asked
	// for; checking again costs nothing and does not rely on it.
	if !slices.Contains(st.Audiences, r.audience) {
		return control.ServiceAccount{}, fmt.Errorf("%w: token is for audiences %q, not %q", control.ErrTokenRejected, st.Audiences, r.audience)
	}
	rest, ok := strings.CutPrefix(st.User.Username, saUserPrefix)
	ns, name, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || name == "" || strings.Contains(name, ":") {
		return control.ServiceAccount{}, fmt.Errorf("%w: %q is not a service account", control.ErrTokenRejected, st.User.Username)
	}
	return control.ServiceAccount{Namespace: ns, Name: name}, nil
}
