"""Hook plugins, one file each; each has its config in conf/plugins/<name>.yaml."""
