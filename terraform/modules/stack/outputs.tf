output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = module.cluster.name
}

output "kubernetes_host" {
  description = "URL of the cluster's API server, for the root module's kubernetes and helm providers."
  value       = local.kubernetes_host
}

output "kubernetes_ca_certificate" {
  description = "PEM CA certificate of the cluster's API server, for the root module's kubernetes and helm providers."
  value       = local.kubernetes_ca_certificate
}

output "gpu_node_selector" {
  description = "nodeSelector of the GPU pool (matches knative/base/service-gpu-fp16.yaml)."
  value       = module.cluster.gpu_node_selector
}

output "api_keys_reference" {
  description = "API_KEYS value for the functions."
  value       = module.vault.api_keys_reference
}

output "vault_roles" {
  description = "Vault role per function service account."
  value       = module.vault.roles
}
