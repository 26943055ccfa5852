-- A listening worker's /proto URL (ws:// or wss://): the server dials it. NULL: the worker dials the server.
ALTER TABLE worker_registrations ADD COLUMN url TEXT;
