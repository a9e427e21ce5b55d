"""HTTP controllers: thin handlers that call the services on app state."""
