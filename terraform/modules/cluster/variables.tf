variable "project_id" {
  description = "Google Cloud project that holds the cluster."
  type        = string
}

variable "name" {
  description = "Cluster name."
  type        = string
}

variable "region" {
  description = "Region of the (regional) cluster."
  type        = string
}

variable "node_locations" {
  description = "Zones for the nodes; empty means the region's default zones."
  type        = list(string)
  default     = []
}

variable "network" {
  description = "VPC network self link or name."
  type        = string
}

variable "subnetwork" {
  description = "Subnetwork self link or name, with the two secondary ranges below."
  type        = string
}

variable "pods_range_name" {
  description = "Secondary range of the subnetwork for pod IPs."
  type        = string
}

variable "services_range_name" {
  description = "Secondary range of the subnetwork for service IPs."
  type        = string
}

variable "master_ipv4_cidr_block" {
  description = "/28 range for the private control plane."
  type        = string
}

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the control plane, by display name."
  type        = map(string)
  default     = {}
}

variable "release_channel" {
  description = "GKE release channel: RAPID, REGULAR or STABLE."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "rbac_security_group" {
  description = "Google Group (gke-security-groups@DOMAIN) whose nested groups RBAC bindings may name."
  type        = string
}

variable "node_service_account" {
  description = "Least-privilege service account email for the nodes."
  type        = string
}

variable "database_encryption_key" {
  description = "Cloud KMS key (projects/.../cryptoKeys/...) encrypting Kubernetes secrets in etcd."
  type        = string
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool (functions ask for 2 CPUs each)."
  type        = string
  default     = "c3-standard-8"
}

variable "cpu_min_nodes" {
  description = "Fewest CPU nodes per zone."
  type        = number
  default     = 1
}

variable "cpu_max_nodes" {
  description = "Most CPU nodes per zone."
  type        = number
  default     = 5
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_type" {
  description = "Accelerator type attached to each GPU node."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_min_nodes" {
  description = "Fewest GPU nodes per zone; 0 lets the pool scale to nothing when idle."
  type        = number
  default     = 0
}

variable "gpu_max_nodes" {
  description = "Most GPU nodes per zone."
  type        = number
  default     = 2
}

variable "gpu_spot" {
  description = "Use Spot VMs for the GPU pool (cheaper, may be preempted)."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Resource labels for the cluster and nodes."
  type        = map(string)
  default     = {}
}
