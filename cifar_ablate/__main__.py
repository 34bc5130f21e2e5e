from cifar_ablate.run import cli

if __name__ == "__main__":  # not when a spawned DDP process imports this module
    cli()
