variable "namespace" {
  description = "Namespace of the monitoring stack."
  type        = string
  default     = "monitoring"
}

variable "chart_version" {
  description = "Version of the kube-prometheus-stack chart (Prometheus Operator, Prometheus, Alertmanager, Grafana)."
  type        = string
  default     = "79.0.0"
}

variable "retention" {
  description = "How long Prometheus keeps samples."
  type        = string
  default     = "15d"
}

variable "storage_size" {
  description = "Size of Prometheus' persistent volume."
  type        = string
  default     = "50Gi"
}

variable "grafana_admin_secret" {
  description = "Existing Secret (keys admin-user, admin-password) with Grafana's admin login; kept out of Terraform state."
  type        = string
  default     = "grafana-admin"
}
