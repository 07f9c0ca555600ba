"""What the AMS and the AGS agree on: the configuration document and the policy schema."""
