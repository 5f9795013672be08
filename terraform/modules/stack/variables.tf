variable "environment" {
  description = "Environment name (dev, staging, prod...): names the cluster kubesentiment-<environment> and labels its resources."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.environment))
    error_message = "environment must be 1 to 20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "foundation" {
  description = "What the environment's Google Cloud project already has, made outside this configuration; the environment passes its root variables here unchanged."
  type = object({
    project_id                 = string      # Google Cloud project of the environment
    region                     = string      # region of the (regional) cluster
    network                    = string      # VPC network of the cluster
    subnetwork                 = string      # subnetwork with the "pods" and "services" secondary ranges
    master_ipv4_cidr_block     = string      # /28 for the private control plane
    master_authorized_networks = map(string) # CIDR blocks allowed to reach the control plane, by display name
    rbac_security_group        = string      # Google Group for GKE RBAC (gke-security-groups@DOMAIN)
    node_service_account       = string      # service account email of the nodes
    database_encryption_key    = string      # Cloud KMS key for Kubernetes secrets
  })
}

# Sizes: no defaults, so every environment states each of them in its own main.tf.

variable "release_channel" {
  description = "GKE release channel of the environment: RAPID, REGULAR or STABLE (the cluster module rejects any other)."
  type        = string
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU node pool."
  type        = string
}

variable "cpu_min_nodes" {
  description = "Fewest CPU nodes per zone; the CPU pool never scales below it."
  type        = number
}

variable "cpu_max_nodes" {
  description = "Most CPU nodes per zone the autoscaler may add."
  type        = number
}

variable "gpu_min_nodes" {
  description = "Fewest GPU nodes per zone; 0 lets the GPU pool scale to nothing when idle."
  type        = number
}

variable "gpu_max_nodes" {
  description = "Most GPU nodes per zone the autoscaler may add."
  type        = number
}

variable "gpu_spot" {
  description = "Whether the GPU pool runs on Spot VMs (cheaper, may be preempted)."
  type        = bool
}

variable "deletion_protection" {
  description = "Whether the cluster refuses `terraform destroy`."
  type        = bool
}

variable "monitoring_retention" {
  description = "How long Prometheus keeps samples in this environment."
  type        = string
}

variable "monitoring_storage_size" {
  description = "Size of Prometheus' persistent volume in this environment."
  type        = string
}
