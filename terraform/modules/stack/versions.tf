terraform {
  required_version = ">= 1.6"

  # No required_providers: this module has no resources of its own. The modules it calls declare
  # the providers they use (google, helm, kubernetes, vault), and the environment's root module
  # configures them; Terraform hands those configurations down implicitly.
}
