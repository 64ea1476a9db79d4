package kube

import rbacv1 "k8s.io/api/rbac/v1"

// ClusterRoleRules are all the control plane may do: read the three kinds
// it watches, and review tokens. It writes nothing. The deployment's
// ClusterRole carries exactly these rules, and the tests run the control
// plane as a service account bound to them.
var ClusterRoleRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"services", "pods"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
}
