"""One module per dataset, each a :class:`~fer_lightning.data.sources.base.DataSource` that its
YAML (``conf/data/<name>.yaml``) chooses: fer2013, fer2013_faces_jaffe, ferplus, jaffe, faces and
synthetic."""
