# Shared by every environment: environments/<name>/moved.tf links here. The four modules were
# called by each environment directly before modules/stack existed; these blocks move their
# state under module.stack instead of destroying and recreating the cluster. Remove them once
# every environment has been applied with them.

moved {
  from = module.cluster
  to   = module.stack.module.cluster
}

moved {
  from = module.knative
  to   = module.stack.module.knative
}

moved {
  from = module.vault
  to   = module.stack.module.vault
}

moved {
  from = module.monitoring
  to   = module.stack.module.monitoring
}
