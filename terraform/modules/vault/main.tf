# Vault for the functions: a KV v2 mount for their secrets, one read-only policy, and the
# Kubernetes auth method with one role per function service account. A function logs in with
# its projected service-account token (VAULT_AUTH_METHOD=kubernetes, VAULT_ROLE = its service
# account) and reads `vault:kv/kubesentiment/api#keys` (API_KEYS). Secret values are written
# by operators (vault kv put), never by Terraform, so they stay out of the state.

resource "vault_mount" "kv" {
  path        = var.kv_mount_path
  type        = "kv"
  options     = { version = "2" }
  description = "KubeSentiment secrets (KV v2)"
}

resource "vault_policy" "function" {
  name = "kubesentiment-function"

  # KV v2 serves secret data under <mount>/data/<path> and versions under <mount>/metadata/.
  policy = <<-EOT
    path "${vault_mount.kv.path}/data/${var.secret_path}" {
      capabilities = ["read"]
    }
  EOT
}

resource "vault_auth_backend" "kubernetes" {
  type = "kubernetes"
  path = var.kubernetes_auth_path
}

resource "vault_kubernetes_auth_backend_config" "this" {
  backend            = vault_auth_backend.kubernetes.path
  kubernetes_host    = var.kubernetes_host
  kubernetes_ca_cert = var.kubernetes_ca_cert
}

resource "vault_kubernetes_auth_backend_role" "function" {
  for_each = var.function_service_accounts

  backend                          = vault_auth_backend.kubernetes.path
  role_name                        = each.value
  bound_service_account_names      = [each.value]
  bound_service_account_namespaces = [var.namespace]
  token_policies                   = [vault_policy.function.name]
  token_ttl                        = var.token_ttl_seconds
  token_max_ttl                    = var.token_max_ttl_seconds
}
