variable "operator_chart_version" {
  description = "Version of the knative-operator Helm chart."
  type        = string
  default     = "v1.20.0"
}

variable "knative_version" {
  description = "Knative Serving and Eventing version the operator installs."
  type        = string
  default     = "1.20"
}

variable "autoscaler" {
  description = "Keys of Knative Serving's config-autoscaler (cluster-wide defaults; Services override per revision)."
  type        = map(string)
  default = {
    "enable-scale-to-zero"       = "true"
    "scale-to-zero-grace-period" = "30s"
    "stable-window"              = "60s"
    "panic-window-percentage"    = "10.0"
    "max-scale-limit"            = "50"
    "allow-zero-initial-scale"   = "true"
  }
}

variable "extra_features" {
  description = "More keys for Knative Serving's config-features, beside the ones the GPU variant needs."
  type        = map(string)
  default     = {}
}

variable "progress_deadline" {
  description = "Default time a revision's Deployment may take to become ready."
  type        = string
  default     = "600s"
}

variable "broker_class" {
  description = "Default Broker class of Knative Eventing."
  type        = string
  default     = "MTChannelBasedBroker"
}
