output "serving_namespace" {
  description = "Namespace of Knative Serving."
  value       = kubernetes_namespace_v1.serving.metadata[0].name
}

output "eventing_namespace" {
  description = "Namespace of Knative Eventing."
  value       = kubernetes_namespace_v1.eventing.metadata[0].name
}

output "features" {
  description = "config-features keys set through the operator."
  value       = local.features
}
