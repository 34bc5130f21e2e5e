from cifar_ablate.run import main

main()
