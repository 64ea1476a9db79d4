package kube_test

import (
	"os"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/quicmesh/quicmesh/internal/control/kube"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var deleteNow = metav1.DeleteOptions{}

// controlClient returns a client that acts as the control plane's service
// account, bound to kube.ClusterRoleRules and nothing else.
func controlClient(t *testing.T, c *kubetest.Cluster) kubernetes.Interface {
	t.Helper()
	client, err := kubernetes.NewForConfig(c.BoundClient(t, "quicmesh-system", "quicmesh-control", kube.ClusterRoleRules))
	if err != nil {
		t.Fatal(err)
	}
	return client
}
