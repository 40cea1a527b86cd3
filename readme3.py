import torch, snntorch as snn
my_snntorch_sequential = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), snn.Leaky(beta=0.9, init_hidden=True), torch.nn.Linear(32, 10), snn.Leaky(beta=0.9, init_hidden=True, output=True))
batch_size = 32
import torch, metaspike
from metaspike.bayesian import bimu_parameters, plain_parameters, settings_for_batch

network = metaspike.bayesianize(my_snntorch_sequential, "bimu", temperature=0.5)   # λ per synapse + gains
per_sample = dict(likelihood_multiplier=160, N=250_000, kl_multiplier=3.76, lr=4.9, lr_max=1.0)
optimizer = metaspike.ChainedOptimizer(
    metaspike.BiMU(bimu_parameters(network), **settings_for_batch("bimu", per_sample, batch_size)),
    torch.optim.Adam(plain_parameters(network), lr=5e-4))
print("ok", optimizer)
