// Placeholder: being written (see the owner of this file).
