"""The network: nn.Modules and their configurations only (official key layout, so official state dicts load).
Configs as data (`configs`), shared layers, backbones behind one interface, FPN, FCOS head, mask heads,
assembled in `centermask`."""
