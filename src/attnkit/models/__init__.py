"""Model families built from the attention core and the layers."""
