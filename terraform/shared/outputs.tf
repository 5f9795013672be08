# Shared by every environment: environments/<name>/outputs.tf links here.

output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = module.stack.cluster_name
}

output "gpu_node_selector" {
  description = "nodeSelector of the GPU pool (matches knative/base/service-gpu-fp16.yaml)."
  value       = module.stack.gpu_node_selector
}

output "api_keys_reference" {
  description = "API_KEYS value for the functions."
  value       = module.stack.api_keys_reference
}

output "vault_roles" {
  description = "Vault role per function service account."
  value       = module.stack.vault_roles
}
