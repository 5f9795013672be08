output "name" {
  description = "Cluster name."
  value       = google_container_cluster.this.name
}

output "endpoint" {
  description = "Control plane address (host, without scheme)."
  value       = google_container_cluster.this.endpoint
}

output "ca_certificate" {
  description = "Base64 PEM of the cluster CA."
  value       = google_container_cluster.this.master_auth[0].cluster_ca_certificate
}

output "gpu_node_selector" {
  description = "nodeSelector that places a pod on the GPU pool."
  value       = { (local.pool_label) = "gpu" }
}

output "gpu_taint" {
  description = "Taint of the GPU nodes, for the tolerations of GPU pods."
  value       = local.gpu_taint
}
