"""HTTP routes: parse the request, call a task, shape the response. Nothing else."""
