output "namespace" {
  description = "Namespace of the monitoring stack."
  value       = helm_release.kube_prometheus_stack.namespace
}

output "release" {
  description = "Helm release name (prefix of the stack's Services)."
  value       = helm_release.kube_prometheus_stack.name
}
