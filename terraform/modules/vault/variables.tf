variable "kv_mount_path" {
  description = "Path of the KV v2 secrets engine the functions read from."
  type        = string
  default     = "kv"
}

variable "secret_path" {
  description = "Path, inside the KV mount, of the functions' secrets (API keys under the key `keys`)."
  type        = string
  default     = "kubesentiment/api"
}

variable "kubernetes_auth_path" {
  description = "Mount path of the Kubernetes auth method (VAULT_KUBERNETES_MOUNT of the functions)."
  type        = string
  default     = "kubernetes"
}

variable "kubernetes_host" {
  description = "Address of the Kubernetes API server that reviews service-account tokens."
  type        = string
}

variable "kubernetes_ca_cert" {
  description = "PEM CA certificate of the Kubernetes API server."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the functions."
  type        = string
  default     = "kubesentiment"
}

variable "function_service_accounts" {
  description = "Service accounts of the functions; each gets a Vault role of the same name (VAULT_ROLE)."
  type        = set(string)
  default     = ["sentiment-cpu-int8", "sentiment-cpu-fp32", "sentiment-cpu-accurate-int8", "sentiment-gpu-fp16"]
}

variable "token_ttl_seconds" {
  description = "Lifetime of the Vault tokens the functions get at login."
  type        = number
  default     = 3600
}

variable "token_max_ttl_seconds" {
  description = "Longest a function's Vault token may be renewed to."
  type        = number
  default     = 14400
}
