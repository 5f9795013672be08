# Shared by every environment: environments/<name>/variables.tf links here. These are the
# values an operator gives each environment (tfvars or -var); its sizes are in its main.tf.

variable "project_id" {
  description = "Google Cloud project of this environment."
  type        = string
}

variable "region" {
  description = "Region of the cluster."
  type        = string
  default     = "europe-west4"
}

variable "network" {
  description = "VPC network for the cluster."
  type        = string
}

variable "subnetwork" {
  description = "Subnetwork with the pods and services secondary ranges."
  type        = string
}

variable "master_ipv4_cidr_block" {
  description = "/28 for the private control plane."
  type        = string
}

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the control plane, by display name."
  type        = map(string)
  default     = {}
}

variable "rbac_security_group" {
  description = "Google Group for GKE RBAC (gke-security-groups@DOMAIN)."
  type        = string
}

variable "node_service_account" {
  description = "Service account email of the nodes."
  type        = string
}

variable "database_encryption_key" {
  description = "Cloud KMS key for Kubernetes secrets."
  type        = string
}

variable "vault_address" {
  description = "Address of the Vault (or OpenBao) server; the provider's token comes from VAULT_TOKEN."
  type        = string
}

locals {
  # The stack's `foundation` input: the variables above but vault_address (which only the vault
  # provider uses), unchanged.
  foundation = {
    project_id                 = var.project_id
    region                     = var.region
    network                    = var.network
    subnetwork                 = var.subnetwork
    master_ipv4_cidr_block     = var.master_ipv4_cidr_block
    master_authorized_networks = var.master_authorized_networks
    rbac_security_group        = var.rbac_security_group
    node_service_account       = var.node_service_account
    database_encryption_key    = var.database_encryption_key
  }
}
