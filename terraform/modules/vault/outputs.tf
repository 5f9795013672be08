output "kv_mount_path" {
  description = "Path of the KV v2 mount."
  value       = vault_mount.kv.path
}

output "api_keys_reference" {
  description = "Value for the functions' API_KEYS setting."
  value       = "vault:${vault_mount.kv.path}/${var.secret_path}#keys"
}

output "roles" {
  description = "Vault role per function service account."
  value       = { for sa, role in vault_kubernetes_auth_backend_role.function : sa => role.role_name }
}
